"""seccomp for containers: a profile in Docker's JSON format, compiled by libseccomp.

Vocabulary:
    profile   the operator's JSON (default.json here, or `orch node --seccomp-profile`)
    filter    the profile resolved for one container: its capabilities, this arch (profile.py)
    program   the filter compiled into classic BPF by libseccomp (compiler.py)
    cache     programs on disk, one per filter digest, in the node's state dir (cache.py)
    loader    hands a program to the kernel in the container's init, last step before exec (loader.py)

Errors: SeccompError (a ContainerError) ← ProfileError (names the file and the field).
"""

from node.runtime.seccomp.cache import DEFAULT_PROFILE, FilterCache, check_profile, load_profile
from node.runtime.seccomp.compiler import compile_filter
from node.runtime.seccomp.loader import load_program
from node.runtime.seccomp.profile import Filter, Profile, ProfileError, SeccompError, parse_profile, resolve

__all__ = [
    "DEFAULT_PROFILE",
    "Filter",
    "FilterCache",
    "Profile",
    "ProfileError",
    "SeccompError",
    "check_profile",
    "compile_filter",
    "load_profile",
    "load_program",
    "parse_profile",
    "resolve",
]
