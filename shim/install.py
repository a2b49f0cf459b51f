"""`iptables-shim install DIR | --alternatives` and `uninstall DIR | --alternatives`.

install DIR: seven links in a directory already on PATH: the six names (iptables, iptables-save,
iptables-restore, ip6tables, ip6tables-save, ip6tables-restore) and iptables-shim itself. For image
authors: `/opt/iptables-shim/iptables-shim install /usr/local/sbin`, which comes before /usr/sbin
on the usual PATH and leaves the image's own /usr/sbin alone. Idempotent: a name that already
leads to this shim is left as it is. Anything else under one of the names (a real iptables, a link
to something else, a second copy of the shim) is never overwritten: the whole install is refused
before anything is written. Nothing outside DIR is written: DIR itself is created when missing,
its parent never. Directories are judged by identity, whatever name they are given: merged-/usr
roots (/sbin -> usr/sbin, /usr/sbin -> bin, /usr/local/sbin -> bin) in docs/install.md#merged-usr.

install --alternatives: for callers that run /usr/sbin/iptables by full path or reset PATH (ufw,
ufw-init, netfilter-persistent). The shim becomes the highest-priority alternative of the
`iptables` and `ip6tables` groups (update-alternatives; `alternatives` on RHEL), after the choice
in force is recorded in STATE_FILE: that recorded choice is the shim's default alias from then on
(recorded_aliases), never the shim itself. uninstall --alternatives puts back exactly what was
there (tests/test_alternatives.py compares `update-alternatives --query` byte for byte).
"""

import errno
import os
import stat

from shim.cache import open_dir
from shim.errors import ShimError
from shim.facts.binaries import identity as _identity
from shim.tools import CLI_NAME, SHIM_NAMES

# Where the distribution's own binaries live. Never written, however reached (/sbin -> /usr/sbin).
SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


TREES = "trees"  # the .deb's versioned trees: HOME/trees/ID/ (docs/packaging.md#upgrades)


def registered_path(executable):
    """The path install links to and registers: the executable's real path, or, where that is one
    of the .deb's versioned trees (HOME/trees/ID/iptables-shim), HOME/iptables-shim: the link
    through HOME/current that each upgrade switches, so nothing made here leads into a tree that an
    upgrade removes."""
    real = os.path.realpath(executable)
    tree = os.path.dirname(real)
    if os.path.basename(os.path.dirname(tree)) == TREES:
        stable = os.path.join(os.path.dirname(os.path.dirname(tree)), CLI_NAME)
        if _identity(stable) == _identity(real):
            return stable
    return real


def installed_names(directory, verb):
    """(name, path, lstat or None where absent) for each name `install DIR` manages."""
    for name in sorted(SHIM_NAMES) + [CLI_NAME]:
        path = os.path.join(directory, name)
        try:
            yield name, path, os.lstat(path)
        except FileNotFoundError:
            yield name, path, None
        except NotADirectoryError:
            raise ShimError("%s is not a directory; nothing was %s" % (directory, verb))
        except OSError as e:
            raise ShimError("cannot inspect %s: %s; nothing was %s" % (path, e.strerror, verb))


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
    if os.path.islink(directory) and not os.path.exists(directory):
        # A merged-/usr link (/usr/local/sbin -> bin) whose target is missing: not followed, as
        # mkdir would, into a directory the layout means but nobody made (docs/install.md).
        raise ShimError("cannot install into %s: it is a link to %s, which does not exist; nothing was "
                        "installed" % (directory, os.readlink(directory)))
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ShimError("cannot install into %s: it is not a directory; nothing was installed" % directory)
    steps = []
    for name, path, st in installed_names(directory, "installed"):
        if st is None:
            steps.append((name, path, "create"))
            continue
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
    target = registered_path(target)
    steps = plan(directory, target)
    if any(action == "create" for _, _, action in steps) and not os.path.isdir(directory):
        # DIR only, never its parents: install writes nothing outside DIR.
        parent = os.path.dirname(os.path.abspath(directory).rstrip("/")) or "/"
        if not os.path.isdir(parent):
            raise ShimError("cannot install into %s: its parent %s does not exist (install creates "
                            "DIR, never its parents); nothing was installed" % (directory, parent))
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        except OSError as e:
            raise ShimError("cannot create %s: %s; nothing was installed" % (directory, e.strerror))
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


def path_warning(directory, target, path_env):
    """None when a PATH search for `iptables`, in PATH order as execvp makes it, reaches the shim in
    `directory`; else one line saying why not. Directories are compared by identity, not by name:
    in merged-/usr roots a directory is on PATH under another name (Fedora 42: /usr/local/sbin is
    /usr/local/bin, and no sbin directory is on PATH at all; tests/test_install_merged_usr.py)."""
    want, own = _identity(directory), _identity(target)
    entries = [e for e in (path_env or "").split(":") if e.startswith("/")]
    ids = [_identity(e) for e in entries]
    if want not in ids:
        instead = _usable_dir(entries, ids, own)
        return ("%s is not on this PATH (%s), under any name: calls of iptables will not reach the shim; "
                "%sadd it to PATH before the directory of the real iptables"
                % (directory, path_env, "install into %s instead, or " % instead if instead else ""))
    for entry in entries[:ids.index(want)]:
        found = os.path.join(entry, "iptables")
        if _identity(found) not in (None, own) and os.path.isfile(found) and os.access(found, os.X_OK):
            return ("%s comes before %s on this PATH (%s): calls of iptables run it, not the shim; put %s "
                    "first on PATH" % (found, directory, path_env, directory))
    return None


def _usable_dir(entries, ids, own):
    """The first existing PATH directory that install would accept and that comes before any real
    iptables (Fedora 42's /usr/local/bin, when /usr/local/sbin is off PATH); None if there is none."""
    system = set(_identity(d) for d in SYSTEM_DIRS) - {None}
    for entry, entry_id in zip(entries, ids):
        if entry_id is not None and entry_id not in system and os.path.isdir(entry):
            return entry
        found = os.path.join(entry, "iptables")
        if _identity(found) not in (None, own) and os.path.isfile(found) and os.access(found, os.X_OK):
            return None
    return None


# -- uninstall DIR ------------------------------------------------------------------------------

def uninstall(directory, target):
    """Remove the links `install DIR` made: [(name, path, action)], action "removed" or "absent".

    Only what install writes is removed: a symlink whose text is this shim's real path. Anything
    else under one of the names (a real binary, a link elsewhere, a relative link such as the
    frozen tree's own, the shim itself) refuses the whole uninstall before anything is removed."""
    target = registered_path(target)
    steps = []
    for name, path, st in installed_names(directory, "removed"):
        if st is None:
            steps.append((name, path, "absent"))
            continue
        if stat.S_ISLNK(st.st_mode) and os.readlink(path) == target:
            steps.append((name, path, "remove"))
            continue
        what = ("a link to %s" % os.readlink(path)) if stat.S_ISLNK(st.st_mode) else "not a link"
        raise ShimError(
            "%s is %s, not a link that `install %s` made to this shim (%s): leaving it; nothing "
            "was removed" % (path, what, directory, target))
    done = []
    for name, path, action in steps:
        if action == "remove":
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise ShimError("cannot remove %s: %s" % (path, e.strerror))
            action = "removed"
        done.append((name, path, action))
    return done


# -- the alternatives system ----------------------------------------------------------------------

STATE_DIR = "/var/lib/iptables-shim"
STATE_FILE = STATE_DIR + "/alternatives"
# (the tool, its administrative directory): Debian/Ubuntu's update-alternatives, RHEL's alternatives.
# Both keep one text file per group in the same format (update-alternatives(8), FILES).
ALT_TOOLS = (
    ("/usr/bin/update-alternatives", "/var/lib/dpkg/alternatives"),
    ("/usr/sbin/update-alternatives", "/var/lib/dpkg/alternatives"),
    ("/usr/sbin/alternatives", "/var/lib/alternatives"),
)
ALT_LINKS = "/etc/alternatives"
GROUPS = ("iptables", "ip6tables")
MIN_PRIORITY = 100  # above Debian's nft (20) and legacy (10) and RHEL's


class Group(object):
    """One alternatives group as its administrative file and /etc/alternatives say it is."""

    __slots__ = ("name", "mode", "link", "slaves", "alternatives", "value", "slave_values")

    def __init__(self, name, mode, link, slaves, alternatives, value, slave_values):
        self.name, self.mode, self.link, self.slaves = name, mode, link, slaves
        self.alternatives = alternatives  # [(path, priority, {slave name: path})]
        self.value = value  # what /etc/alternatives/NAME leads to now, or None
        self.slave_values = slave_values  # {slave name: what /etc/alternatives/SLAVE leads to}

    def paths(self):
        return [a[0] for a in self.alternatives]


def alternatives_tool():
    for tool, admin in ALT_TOOLS:
        if os.access(tool, os.X_OK):
            return tool, admin
    return None, None


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:
        return None


def read_group(admin, name):
    """The group from ADMIN/NAME, or None where there is no such group.

    Format: mode, master link, (slave name, slave link)* , "", then per alternative: path,
    priority (RHEL may prefix a family as @family@), one line per slave (empty: none), and a
    final empty line."""
    try:
        fd = os.open(os.path.join(admin, name), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no hang
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ShimError("cannot read %s/%s: %s" % (admin, name, e.strerror))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ShimError("cannot read %s/%s: not a regular file; nothing was changed" % (admin, name))
        with os.fdopen(fd, closefd=False) as f:
            lines = f.read().split("\n")
    except (OSError, ValueError) as e:
        raise ShimError("cannot read %s/%s: %s" % (admin, name, getattr(e, "strerror", None) or e))
    finally:
        os.close(fd)
    try:
        mode, link = lines[0], lines[1]
        i = 2
        slaves = []
        while lines[i] != "":
            slaves.append((lines[i], lines[i + 1]))
            i += 2
        i += 1
        alternatives = []
        while i < len(lines) and lines[i] != "":
            path, priority = lines[i], lines[i + 1].rpartition("@")[2]
            followers = dict(zip([s for s, _ in slaves], lines[i + 2:i + 2 + len(slaves)]))
            alternatives.append((path, int(priority), followers))
            i += 2 + len(slaves)
    except (IndexError, ValueError):
        raise ShimError("cannot parse %s/%s: not the alternatives format this shim knows; nothing "
                        "was changed" % (admin, name))
    return Group(name, mode, link, slaves, alternatives, _readlink(os.path.join(ALT_LINKS, name)),
                 {s: _readlink(os.path.join(ALT_LINKS, s)) for s, _ in slaves})


def shim_names_beside(target):
    """{name: path to register}: the shim's names beside its executable where they lead to it
    (bin/iptables, /opt/iptables-shim/iptables), else the executable itself (argv[0], the
    /usr/sbin link, names the tool either way)."""
    own = _identity(target)
    out = {}
    for name in SHIM_NAMES:
        beside = os.path.join(os.path.dirname(target), name)
        out[name] = beside if _identity(beside) == own else target
    return out


class Record(object):
    """STATE_FILE: per group, the mode and choice before install, the path and priority the shim
    was registered with, and the recorded choice for every name of the group (the default alias)."""

    __slots__ = ("tool", "groups", "aliases")

    def __init__(self, tool, groups, aliases):
        self.tool = tool
        self.groups = groups  # {group: (mode, value, shim path, priority)}
        self.aliases = aliases  # {name: path}

    def text(self):
        lines = ["# iptables-shim install --alternatives: what was selected before. Read by the shim",
                 "# (its default alias) and by `iptables-shim uninstall --alternatives`. Do not edit.",
                 "tool %s" % self.tool]
        for g in sorted(self.groups):
            mode, value, path, priority = self.groups[g]
            lines.append("group %s %s %s %s %d" % (g, mode, value, path, priority))
        for name in sorted(self.aliases):
            lines.append("alias %s %s" % (name, self.aliases[name]))
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text):
        tool, groups, aliases = None, {}, {}
        for line in text.splitlines():
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "tool" and len(words) == 2:
                tool = words[1]
            elif words[0] == "group" and len(words) == 6 and words[5].isdigit():
                groups[words[1]] = (words[2], words[3], words[4], int(words[5]))
            elif words[0] == "alias" and len(words) == 3 and words[2].startswith("/"):
                aliases[words[1]] = words[2]
            else:
                raise ValueError(line)
        return cls(tool, groups, aliases)


def _trusted(st):
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read_record(path=STATE_FILE):
    """The record, or None if there is none; ShimError if it is there but not to be trusted.
    The directory and the file themselves, never what a symlink there (or a trailing slash) leads
    to, each checked by its descriptor; the file opened without blocking (a FIFO put there must not
    hang every call) and read only when regular
    (tests/test_hostile.py::test_fifos_in_place_of_what_the_shim_reads)."""
    directory, _, name = path.rpartition("/")
    untrusted = ("%s is not a root-owned file in a root-owned directory writable by root only: not "
                 "trusted; remove it" % path)
    try:
        dir_fd = open_dir(directory or "/")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ShimError(untrusted if e.errno == errno.ELOOP else "cannot read %s: %s" % (path, e.strerror))
    try:
        dst = os.fstat(dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ShimError("cannot read %s: %s" % (path, e.strerror))
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and _trusted(st) and _trusted(dst)):
            raise ShimError(untrusted)  # checked before fdopen, which raises on a directory
        with os.fdopen(fd, closefd=False) as f:
            return Record.parse(f.read())
    except ValueError as e:  # a line Record.parse refuses, or not UTF-8
        raise ShimError("%s: unreadable line %r; it was not written by this shim" % (path, str(e)))
    except OSError as e:
        raise ShimError("cannot read %s: %s" % (path, e.strerror))
    finally:
        os.close(fd)


def recorded_aliases(shim_ids=(), path=STATE_FILE):
    """{name: path} of the choice `install --alternatives` recorded for each of the six names,
    for fact gathering: with the shim installed there, /usr/sbin/iptables leads to the shim and is
    skipped, and this is the default alias instead (docs/install.md). Only
    recorded paths that still exist as executable regular files that are not a shim (shim_ids:
    their (st_dev, st_ino)) are given. {} when there is no record or it is not to be trusted:
    never an error, so a broken record costs the alias and nothing else."""
    try:
        record = read_record(path)
    except ShimError:
        return {}
    if record is None:
        return {}
    out = {}
    for name, target in record.aliases.items():
        if name not in SHIM_NAMES:
            continue
        try:
            st = os.stat(target)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in shim_ids and os.access(target, os.X_OK):
            out[name] = target
    return out


def _write_record(record):
    os.makedirs(STATE_DIR, 0o755, exist_ok=True)
    tmp = STATE_FILE + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(record.text())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, STATE_FILE)


def _run_tool(argv):
    import subprocess  # install and uninstall only: recorded_aliases, on every cold call, needs none

    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          check=False)
    if proc.returncode != 0:
        last = (proc.stdout.decode("utf-8", "replace").strip().splitlines() or ["(no output)"])[-1]
        raise ShimError("%s failed (exit %d): %s" % (" ".join(argv[:3]), proc.returncode, last))


def _groups(admin):
    """The groups to take over: iptables and ip6tables (Debian), or iptables alone where ip6tables
    is one of its followers (RHEL). ShimError where there is nothing to take over."""
    groups = {}
    for name in GROUPS:
        g = read_group(admin, name)
        if g is not None:
            groups[name] = g
    if "iptables" not in groups:
        raise ShimError("no iptables group in %s: iptables is not managed by the alternatives system "
                        "here; use `iptables-shim install /usr/local/sbin` instead" % admin)
    for g in groups.values():
        unknown = [s for s, _ in g.slaves if s not in SHIM_NAMES]
        if unknown:
            raise ShimError("the %s alternatives group has followers the shim does not serve (%s): "
                            "refusing to take it over; nothing was changed" % (g.name, ", ".join(unknown)))
    return groups


def alternatives_state(target):
    """(tool, admin, groups, record, names): everything install and uninstall decide from."""
    tool, admin = alternatives_tool()
    if tool is None:
        raise ShimError("neither update-alternatives nor alternatives is installed here; use "
                        "`iptables-shim install /usr/local/sbin` instead")
    return tool, admin, _groups(admin), read_record(), shim_names_beside(target)


def refuse_hand_registration(groups, target, tool, outcome):
    """Called where no record says `install --alternatives` registered the shim: one error line if
    an alternative of any group leads to the shim all the same (someone registered it by hand)."""
    own = _identity(target)
    for name, group in sorted(groups.items()):
        mine = next((p for p in group.paths() if _identity(p) == own), None)
        if mine:
            raise ShimError("the shim (%s) is an alternative of %s that `install --alternatives` did "
                            "not put there (no %s): %s; `%s --remove %s %s` removes it"
                            % (mine, name, STATE_FILE, outcome, tool, name, mine))


def install_alternatives(target):
    """[(group, shim path, action)] with action "registered" or "already this shim"."""
    target = registered_path(target)
    tool, admin, groups, record, names = alternatives_state(target)
    if record is not None:
        # Installed before: in place only if every group still selects the shim it recorded.
        done = []
        for name, (mode, value, path, priority) in sorted(record.groups.items()):
            g = groups.get(name)
            if g is None or g.value != path or path not in g.paths():
                raise ShimError(
                    "%s records an install, but the %s alternative is now %s, not the shim (%s): "
                    "changed since; set it back with `%s --set %s %s` or restore what the record says "
                    "by hand" % (STATE_FILE, name, g.value if g else "gone", path, tool, name, path))
            done.append((name, path, "already this shim"))
        return done
    aliases, groups_rec, commands = {}, {}, []
    refuse_hand_registration(groups, target, tool, "nothing was installed")
    for name, g in sorted(groups.items()):
        if g.value is None or g.value not in g.paths() or g.mode not in ("auto", "manual"):
            raise ShimError("the %s alternative is broken (%s points to %s): repair it with `%s --config "
                            "%s` first; nothing was changed" % (name, os.path.join(ALT_LINKS, name), g.value,
                                                                  tool, name))
        for path in [g.value] + list(g.slave_values.values()):
            if path is None or any(c.isspace() for c in path):
                raise ShimError("the %s alternative has a follower with no or an unusual path (%r): "
                                "nothing was changed" % (name, path))
        priority = max([MIN_PRIORITY] + [a[1] + 1 for a in g.alternatives])
        shim_path = names[name]
        groups_rec[name] = (g.mode, g.value, shim_path, priority)
        aliases[name] = g.value
        aliases.update(g.slave_values)
        argv = [tool, "--install", g.link, name, shim_path, str(priority)]
        for slave, link in g.slaves:
            argv += ["--slave", link, slave, names[slave]]
        commands.append(argv)
        if g.mode == "manual":  # a manual choice outranks any priority: choose the shim by hand too
            commands.append([tool, "--set", name, shim_path])
    # The record first: whatever happens next, uninstall knows what to put back.
    try:
        _write_record(Record(tool, groups_rec, aliases))
    except OSError as e:
        raise ShimError("cannot write %s: %s; nothing was changed" % (STATE_FILE, e.strerror))
    for argv in commands:
        _run_tool(argv)
    done = []
    for name, (_, _, path, _) in sorted(groups_rec.items()):
        now = _readlink(os.path.join(ALT_LINKS, name))
        if now != path:
            raise ShimError("registered the shim for %s, but %s still leads to %s; `iptables-shim "
                            "uninstall --alternatives` puts back what was there" % (
                                name, os.path.join(ALT_LINKS, name), now))
        done.append((name, path, "registered"))
    return done


def uninstall_alternatives(target):
    """[(group, restored choice, action)] with action "restored" ; [] when nothing was installed."""
    target = registered_path(target)
    tool, admin, groups, record, names = alternatives_state(target)
    if record is None:
        refuse_hand_registration(groups, target, tool, "leaving it")
        return []
    commands = []
    for name, (mode, value, path, priority) in sorted(record.groups.items()):
        g = groups.get(name)
        if g is None or g.value != path:
            raise ShimError("the %s alternative is now %s, not the shim (%s) that install --alternatives "
                            "selected: changed since; nothing was changed (the record is %s)"
                            % (name, g.value if g else "gone", path, STATE_FILE))
        if value not in g.paths():
            raise ShimError("%s, the %s alternative selected before install, is gone: nothing was "
                            "changed (the record is %s)" % (value, name, STATE_FILE))
        # One change of the link, straight to what it was: a manual choice is set back before the
        # shim's entry goes (removing the selected entry first would put the group in auto mode,
        # and callers on nft for a moment where legacy was chosen: tests/test_upgrades.py).
        if mode == "manual":
            commands += [[tool, "--set", name, value], [tool, "--remove", name, path]]
        else:
            commands += [[tool, "--remove", name, path], [tool, "--auto", name]]
    for argv in commands:
        _run_tool(argv)
    done = []
    for name, (mode, value, path, priority) in sorted(record.groups.items()):
        now = _readlink(os.path.join(ALT_LINKS, name))
        if now != value:
            raise ShimError("removed the shim from %s, but it now leads to %s, not %s as before; the "
                            "record stays in %s" % (name, now, value, STATE_FILE))
        done.append((name, value, "restored"))
    os.unlink(STATE_FILE)
    try:
        os.rmdir(STATE_DIR)  # made by install; kept if anything else is in it
    except OSError:
        pass
    return done
