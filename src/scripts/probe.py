# The probe's fast path (see commands::probe): the same report as the
# docker CLI calls, from one process talking to the Docker socket. Plain
# sockets and HTTP/1.0: importing http.client alone took ~20 ms.
# argv: PROJECT BASE...  Any failure exits non-zero: the CLI path runs.
import json, socket, sys

project, bases = sys.argv[1], sys.argv[2:]


def quote(s):
    return "".join(c if c.isalnum() or c in "-._~" else "%%%02X" % b
                   for c in s for b in c.encode())


def get(path, ok404=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect("/var/run/docker.sock")
    s.sendall(("GET %s HTTP/1.0\r\nHost: docker\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status == b"404" and ok404:
        return None
    if status != b"200":
        sys.exit(3)
    return json.loads(body)


label = quote(json.dumps({"label": ["provision.project=" + project]}))
out = ["@docker " + get("/version")["Version"], "@images"]
for i in get("/images/json?filters=" + label):
    out += [t for t in i.get("RepoTags") or [] if t != "<none>:<none>"]
out.append("@containers")
for c in get("/containers/json?all=1&filters=" + label):
    spec = (c.get("Labels") or {}).get("provision.spec", "")
    out.append("%s\t%s\t%s" % (c["Names"][0].lstrip("/"), c["State"], spec))
out.append("@networks")
out += [n["Name"] for n in get("/networks?filters=" + label)]
out.append("@volumes")
out += [v["Name"] for v in get("/volumes").get("Volumes") or []]
out.append("@bases")
out += [b for b in bases if get("/images/%s/json" % quote(b), True) is not None]
print("\n".join(out))
