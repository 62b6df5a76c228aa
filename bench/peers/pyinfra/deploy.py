# The benchmark's work with pyinfra's own operations.
import os

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import docker, files

greeting = os.environ.get("BENCH_GREETING") or "hello from pyinfra"
build_dir = "/var/lib/pyinfra-bench/build"

# Docker answers (a fact: a check, never a change).
assert host.get_fact(Command, "docker info --format '{{.ServerVersion}}'")

files.directory(name="build folder", path=build_dir)
files.template(
    name="Dockerfile",
    src="Dockerfile.j2",
    dest=f"{build_dir}/Dockerfile",
    greeting=greeting,
)
docker.build(name="build image", path=build_dir, tags=["pyi-hello:latest"])
docker.volume(name="volume", volume="pyi-data")
docker.container(
    name="container",
    container="pyi-hello",
    image="pyi-hello:latest",
    ports=["18083:8080"],
    volumes=["pyi-data:/data"],
    labels=["bench=pyinfra"],
    restart_policy="unless-stopped",
)
