# The versioned trees (docs/packaging.md#upgrades): included by packaging/deb.sh into preinst,
# postinst, prerm and postrm where they say #TREES#.
#
# dpkg replaces a package's files one at a time, so the tree it unpacks (LIBDIR/shipped) is half old,
# half new while it works, and it deletes the old version's files as soon as the new ones are in.
# Calls never run from there: LIBDIR/iptables-shim and the six names (the package's own links, the
# paths the alternatives register) lead through LIBDIR/current to LIBDIR/trees/ID, a tree of hard links
# made from a complete LIBDIR/shipped. dpkg replaces a file by renaming a new one over its name,
# never by writing into it, so the hard links keep each version's bytes whole. One rename of
# `current` moves every name to the new tree at once; the old tree goes once no process runs its
# executable (a call that started there has exec'd the real iptables or ended by then).
LIBDIR=/usr/lib/iptables-shim

# trees/ID made from the tree $1 (hard links: no second copy on disk); ID is $2. Made under a
# temporary name and renamed, so a tree by its final name is always whole.
trees_make() {
    [ -d "$LIBDIR/trees/$2" ] && return 0
    mkdir -p "$LIBDIR/trees"
    rm -rf "$LIBDIR/trees/$2.new"
    mkdir "$LIBDIR/trees/$2.new"
    for entry in "$1"/*; do
        case ${entry##*/} in
            trees|current|current.new|shipped) ;;
            *) cp -al "$entry" "$LIBDIR/trees/$2.new/" ;;
        esac
    done
    mv -T "$LIBDIR/trees/$2.new" "$LIBDIR/trees/$2"
}

# Every name to trees/$1 at once: rename(2) of a new link over `current`.
trees_switch() {
    ln -sfn "trees/$1" "$LIBDIR/current.new"
    mv -T "$LIBDIR/current.new" "$LIBDIR/current"
}

# The ID of the shipped tree: the package's version, and a digest of the files dpkg recorded for
# it (a reinstall of the same bytes keeps its tree; a rebuild under the same version gets another).
trees_id() {
    digest=$(dpkg-query --control-show iptables-shim md5sums | grep " usr/lib/iptables-shim/shipped/" | md5sum)
    echo "@VERSION@-$(echo "$digest" | cut -c1-12)"
}

# Does a process run the executable of tree $1 (a call still in it)? A process in the middle of
# execve(2) is not listed yet: callers wait a second after a switch before asking.
trees_in_use() {
    for exe in /proc/[0-9]*/exe; do
        case $(readlink "$exe" 2>/dev/null) in
            "$1"/*) return 0 ;;
        esac
    done
    return 1
}

# Remove every tree but `current`'s once no call is in it, waiting up to $1 seconds; a tree still
# in use after that (a long `iptables-shim doctor`) stays for the next upgrade or the removal.
trees_collect() {
    keep=$(readlink "$LIBDIR/current" 2>/dev/null || true)
    sleep 1
    waited=0
    for tree in "$LIBDIR"/trees/*; do
        [ -d "$tree" ] || continue
        [ "trees/${tree##*/}" = "$keep" ] && continue
        while trees_in_use "$tree" && [ "$waited" -lt "$(($1 * 10))" ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if trees_in_use "$tree"; then
            echo "iptables-shim: $tree is still in use; it is removed at the next upgrade or removal" >&2
        else
            rm -rf "$tree"
        fi
    done
}
