# The probe's fast path (see commands::probe): the same report as the
# docker CLI calls, from one process talking to the Docker socket.
# argv: PROJECT BASE...  Any failure exits non-zero: the CLI path runs.
import http.client, json, socket, sys, urllib.parse


class Docker(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect("/var/run/docker.sock")


project, bases = sys.argv[1], sys.argv[2:]
docker = Docker("localhost")


def get(path, ok404=False):
    docker.request("GET", path)
    r = docker.getresponse()
    body = r.read()
    if r.status == 404 and ok404:
        return None
    if r.status != 200:
        sys.exit(3)
    return json.loads(body)


label = urllib.parse.quote(json.dumps({"label": ["provision.project=" + project]}))
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
out += [b for b in bases if get("/images/%s/json" % urllib.parse.quote(b, safe=""), True)]
print("\n".join(out))
