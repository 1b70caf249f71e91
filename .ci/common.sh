# Shared by .ci/run and .ci/run-latest (sourced, not run).

# ci_versions VENV: the interpreter and the installed versions of the packages whose releases
# change results or break tests (read from the installed metadata: nothing is imported).
ci_versions() {
    "$1/bin/python" - <<'PY'
import platform
from importlib import metadata

print(f"CI: python {platform.python_version()} ({platform.machine()})")
for dist in ("torch", "torchvision", "numpy", "scipy", "opencv-python-headless", "pandas", "timm",
             "pillow", "pytest"):
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "not installed"
    print(f"CI: {dist} {version}")
PY
}

# ci_finish STATUS START: pytest's status as CI's (exit 5, nothing collected, is a failure),
# with the wall time since START (seconds since the epoch).
ci_finish() {
    local status=$1 elapsed=$(( $(date +%s) - $2 ))
    echo "CI: wall time $((elapsed / 60)) min $((elapsed % 60)) s"
    # pytest exits 5 when it collected nothing: a CI that ran no test has failed
    if [ "$status" -eq 5 ]; then echo "CI: pytest collected no tests" >&2; exit 1; fi
    exit "$status"
}
