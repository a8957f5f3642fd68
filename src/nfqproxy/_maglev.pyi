# Stub for the compiled cext/maglev.pyx.
from array import array

def build_table(ordered_names: list[str], size: int, seed: int) -> array[int]: ...
