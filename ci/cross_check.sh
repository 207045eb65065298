#!/usr/bin/env bash
# The C core and the extensions' C on the platforms this machine is not:
# compiled for x86_64 Linux, arm64 and x86_64 macOS and x86_64 Windows with
# zig's clang (the `cross` extra), warnings as errors, and the threading
# layer's Windows branch run under Wine.  What each step verifies:
#
#   core      tests/c_core/pool_stress.c (every function of src_c/*.h, and
#             its threads) to an object, as C11 and as C99, per target;
#   msvc      the Windows branch as MSVC would select it (_MSC_VER: TLS by
#             __declspec(thread), Interlocked atomics), with stub pthread.h,
#             unistd.h, sched.h, sys/time.h that #error when included;
#   cython    the C that Cython generates for each extension (setup.py's
#             own list and directives) to an object, against this Python's
#             Include/ headers: as they are for Linux and macOS (same LP64
#             sizes; the macOS SDK headers are zig's), with
#             ci/pyconfig-windows.h as pyconfig.h for Windows; then linked:
#             a macOS bundle (Python's symbols left to the loader), a
#             Windows DLL (against an import library of the Python symbols
#             it uses: every other symbol resolves in Windows' libraries);
#   run       pool_stress natively, and as Windows .exe files (GCC atomics;
#             the MSVC selection above) under Wine: queues, parallel_for
#             ranges, stolen tasks (timed looks, other threads' CPU
#             clocks), timed waits, keep and close.
#
# Not verified here: the Python layer on macOS or Windows, MSVC itself.
#
#     bash ci/cross_check.sh          (installs wine64 with apt when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
ROUNDS=${JF_STRESS_ROUNDS:-400}

if ! "$PYTHON" -m ziglang version >/dev/null 2>&1; then
    echo "cross_check: zig is missing: pip install '.[cross]' (ziglang)" >&2
    exit 1
fi
zig() { "$PYTHON" -m ziglang "$@"; }
command -v nm >/dev/null || { echo "cross_check: nm (binutils) is missing" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/jf-cross.XXXXXX")
WINE=/usr/lib/wine/wine64
cleanup() {
    # Wine's server outlives the programs for a few seconds, writing into
    # the prefix: stop this prefix's server before removing it.
    if [ -d "$WORK/wine" ] && [ -x /usr/lib/wine/wineserver ]; then
        WINEPREFIX=$WORK/wine /usr/lib/wine/wineserver -k 2>/dev/null || true
        WINEPREFIX=$WORK/wine /usr/lib/wine/wineserver -w 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
passed=0
step() { echo "cross_check: $*"; passed=$((passed + 1)); }

WARN=(-O2 -Wall -Wextra -Werror)
TARGETS=(x86_64-linux-gnu aarch64-macos.11.0 x86_64-macos.10.13 x86_64-windows-gnu)
MSVC_LIKE=(-target x86_64-windows-gnu -D_MSC_VER=1930 -fms-extensions -DJF_FORCE_INTERLOCKED)

# -- core -----------------------------------------------------------------
for target in "${TARGETS[@]}"; do
    for std in gnu11 gnu99; do
        zig cc -target "$target" -std=$std "${WARN[@]}" -Isrc_c \
            -c tests/c_core/pool_stress.c -o "$WORK/core-$target-$std.o"
    done
    step "core $target (C11, C99): compiled"
done

# -- msvc -----------------------------------------------------------------
mkdir -p "$WORK/stubs/sys"
for h in pthread.h unistd.h sched.h sys/time.h; do
    echo "#error \"$h included: the Windows branch must not use POSIX\"" \
        > "$WORK/stubs/$h"
done
zig cc "${MSVC_LIKE[@]}" "${WARN[@]}" -I"$WORK/stubs" -Isrc_c \
    tests/c_core/pool_stress.c -o "$WORK/pool_stress_msvc_like.exe"
step "msvc-like Windows branch, POSIX headers stubbed to #error: compiled"

# -- cython ---------------------------------------------------------------
"$PYTHON" - "$WORK/cy" <<'EOF'
import runpy, sys
from Cython.Build import cythonize
ns = runpy.run_path("setup.py", run_name="cross_check")
cythonize(ns["extensions"], compiler_directives=ns["DIRECTIVES"],
          build_dir=sys.argv[1], force=True, quiet=True)
EOF
PYINC=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
cp -r "$PYINC" "$WORK/py-windows"
cp ci/pyconfig-windows.h "$WORK/py-windows/pyconfig.h"
mapfile -t GENERATED < <(find "$WORK/cy" -name '*.c' | sort)
[ "${#GENERATED[@]}" -ge 3 ] || { echo "cross_check: no generated C" >&2; exit 1; }
for target in "${TARGETS[@]}"; do
    inc=$PYINC
    case $target in *windows*) inc=$WORK/py-windows ;; esac
    objs=()
    for c in "${GENERATED[@]}"; do
        o=$WORK/$(basename "$c" .c)-$target.o
        zig cc -target "$target" "${WARN[@]}" -fPIC -I"$inc" -Isrc_c \
            -Ijoblib_fast/include -c "$c" -o "$o"
        objs+=("$o")
    done
    case $target in
    *macos*)
        for o in "${objs[@]}"; do
            zig cc -target "$target" -shared -undefined dynamic_lookup \
                -o "${o%.o}.so" "$o"
        done
        linked="linked as bundles" ;;
    *windows*)
        {
            echo "LIBRARY python3.dll"
            echo "EXPORTS"
            for o in "${objs[@]}"; do nm -u "$o"; done | awk '{print $2}' \
                | sed 's/^__imp_//' | grep -E '^_?Py' | sort -u
        } > "$WORK/python.def"
        zig dlltool -d "$WORK/python.def" -l "$WORK/libpython.a" -m i386:x86-64
        for o in "${objs[@]}"; do
            zig cc -target "$target" -shared -o "${o%.o}.pyd" "$o" \
                -L"$WORK" -lpython
        done
        linked="linked as DLLs" ;;
    *)
        linked="objects" ;;
    esac
    step "cython $target: ${#objs[@]} extensions compiled, $linked"
done

# -- run ------------------------------------------------------------------
zig cc "${WARN[@]}" -Isrc_c tests/c_core/pool_stress.c -o "$WORK/pool_stress"
"$WORK/pool_stress" "$ROUNDS"
step "pool_stress native: ran"

zig cc -target x86_64-windows-gnu "${WARN[@]}" -Isrc_c \
    tests/c_core/pool_stress.c -o "$WORK/pool_stress.exe"
if [ ! -x "$WINE" ]; then
    echo "cross_check: installing wine64 (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends wine64 >/dev/null
fi
export WINEPREFIX=$WORK/wine WINEDEBUG=-all
for exe in pool_stress.exe pool_stress_msvc_like.exe; do
    # Wine's first start sets up the prefix (tens of seconds); a hang
    # fails by the timeout.  Wine's own notices go to its stderr log.
    timeout 600 "$WINE" "$WORK/$exe" "$ROUNDS" 2>"$WORK/wine.log" \
        || { cat "$WORK/wine.log" >&2; echo "cross_check: $exe failed" >&2; exit 1; }
    step "$exe under Wine: ran"
done
echo "cross_check: $passed passed, 0 failed"
