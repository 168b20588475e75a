# Put on PYTHONPATH by tests/conftest.py so every Python started by the tests (notebook
# kernels included) refuses non-loopback network connections.
try:
    from course_lib import netguard

    netguard.install()
except ImportError:  # course_lib not installed in this interpreter: nothing to guard with
    pass
