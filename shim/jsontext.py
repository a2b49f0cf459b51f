"""JSON for `--json` outputs, also on Debian's python3-minimal, which has no `json` module: plain
data only (dict with str keys, list, tuple, str, int, float, bool, None), sorted keys, indented."""


def dumps(value, indent=2):
    try:
        import json
    except ImportError:
        return "\n".join(_lines(value, indent, 0, ""))
    return json.dumps(value, indent=indent, sort_keys=True)


def _str(text):
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code > 0x7E:
            if code > 0xFFFF:  # a surrogate pair, as json.dumps writes it
                code -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
            else:
                out.append("\\u%04x" % code)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _str(value)
    raise TypeError("not plain data: %r" % (value,))


def _lines(value, indent, depth, head):
    pad = " " * (indent * depth)
    inner = " " * (indent * (depth + 1))
    if isinstance(value, dict):
        if not value:
            return [pad + head + "{}"]
        lines = [pad + head + "{"]
        keys = sorted(value)
        for i, key in enumerate(keys):
            sub = _lines(value[key], indent, depth + 1, _str(key) + ": ")
            sub[0] = inner + sub[0].lstrip(" ")
            if i < len(keys) - 1:
                sub[-1] += ","
            lines.extend(sub)
        return lines + [pad + "}"]
    if isinstance(value, (list, tuple)):
        if not value:
            return [pad + head + "[]"]
        lines = [pad + head + "["]
        for i, item in enumerate(value):
            sub = _lines(item, indent, depth + 1, "")
            if i < len(value) - 1:
                sub[-1] += ","
            lines.extend(sub)
        return lines + [pad + "]"]
    return [pad + head + _scalar(value)]
