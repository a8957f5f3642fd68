# Makes cext/fastpath/ a package of declarations that fastpath.pyx cimports
# (fastpath.constants, fastpath.structs); the .pxi files beside them are `include`d.
