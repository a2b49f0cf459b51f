"""`iptables-shim install DIR`: the shim's names as links in a directory already on PATH.

For image authors: `/opt/iptables-shim/iptables-shim install /usr/local/sbin` puts iptables,
iptables-save, ... (and iptables-shim) in /usr/local/sbin, which comes before /usr/sbin on the
usual PATH, and leaves the image's own /usr/sbin binaries alone. Idempotent: a name that already
leads to this shim is left as it is. Anything else under one of the names (a real iptables, a
link to something else, a second copy of the shim) is never overwritten: the whole install is
refused before anything is written.
"""

import os
import stat

from shim.errors import ShimError
from shim.facts.binaries import identity as _identity
from shim.tools import CLI_NAME, SHIM_NAMES

# Where the distribution's own binaries live. Never written, however reached (/sbin -> /usr/sbin).
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def plan(directory, target):
    """[(name, path, action)] with action "create" or "in place"; ShimError if anything refuses."""
    own = _identity(target)
    if own is None:
        raise ShimError("cannot find the shim's own executable %s" % target)
    real_dir = os.path.realpath(directory)
    dir_id = _identity(real_dir)
    for system in SYSTEM_DIRS:
        if real_dir == os.path.realpath(system) or (dir_id and dir_id == _identity(system)):
            raise ShimError(
                "refusing to install into %s: it holds the distribution's own binaries; "
                "install into a directory earlier on PATH, such as /usr/local/sbin" % directory
            )
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ShimError("cannot install into %s: it is not a directory" % directory)
    steps = []
    for name in sorted(SHIM_NAMES) + [CLI_NAME]:
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            steps.append((name, path, "create"))
            continue
        except OSError as e:
            raise ShimError("cannot inspect %s: %s; nothing was installed" % (path, e.strerror))
        leads_here = _identity(path) == own
        if leads_here and (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            steps.append((name, path, "in place"))
        elif stat.S_ISLNK(st.st_mode):
            raise ShimError(
                "%s is a link to %s, not to this shim (%s): remove it first if it should be "
                "replaced; nothing was installed" % (path, os.readlink(path), target)
            )
        else:
            raise ShimError(
                "%s exists and is not this shim (a real iptables binary?): refusing to overwrite "
                "it; nothing was installed" % path
            )
    return steps


def install(directory, target):
    """Create the links planned for `directory`; returns the plan as carried out."""
    target = os.path.realpath(target)
    steps = plan(directory, target)
    if any(action == "create" for _, _, action in steps):
        try:
            os.makedirs(directory, 0o755, exist_ok=True)
        except OSError as e:
            raise ShimError("cannot create %s: %s" % (directory, e.strerror))
    done = []
    for name, path, action in steps:
        if action == "create":
            try:
                os.symlink(target, path)
            except FileExistsError:
                # Appeared since the plan: accept it only if it leads to this shim.
                if _identity(path) != _identity(target):
                    raise ShimError("%s appeared while installing and is not this shim" % path)
                action = "in place"
            except OSError as e:
                raise ShimError("cannot create %s: %s" % (path, e.strerror))
        done.append((name, path, action))
    return done
