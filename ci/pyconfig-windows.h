/* pyconfig.h for ci/cross_check.sh: compiling the extensions' generated C
 * for x86_64-windows-gnu needs Python's headers configured for Windows,
 * and CPython's own Windows pyconfig.h is not on a Linux machine.  These
 * are the facts Python's Include/ headers ask of a 64-bit Windows build
 * (LLP64 sizes, the Windows and NT-threads paths, a DLL-imported API).
 * Compile check only: nothing is linked against a real python3X.dll. */
#ifndef JF_CROSS_PYCONFIG_H
#define JF_CROSS_PYCONFIG_H

#define MS_WIN32 1
#define MS_WIN64 1
#define MS_WINDOWS 1
#define NT_THREADS 1
#define Py_ENABLE_SHARED 1
#define HAVE_DECLSPEC_DLL 1

#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_UINTPTR_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_WCHAR_T 2
#define SIZEOF_FLOAT 4
#define SIZEOF_DOUBLE 8
#define SIZEOF_LONG_DOUBLE __SIZEOF_LONG_DOUBLE__
#define SIZEOF__BOOL 1
#define ALIGNOF_LONG 4
#define ALIGNOF_SIZE_T 8

#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1
#define HAVE_WCHAR_H 1
#define HAVE_SYS_STAT_H 1

#endif /* JF_CROSS_PYCONFIG_H */
