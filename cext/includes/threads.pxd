# The pthread mutex that guards a Core's tables: the queue worker threads decide without the
# GIL while the controller reprograms the tables from Python.
cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    enum:
        PTHREAD_MUTEX_RECURSIVE
    int pthread_mutexattr_init(pthread_mutexattr_t *attr)
    int pthread_mutexattr_settype(pthread_mutexattr_t *attr, int kind)
    int pthread_mutexattr_destroy(pthread_mutexattr_t *attr)
    int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)
