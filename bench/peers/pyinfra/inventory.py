_key = "../.provision/id_ed25519"
_known = "../.provision/known_hosts"
bench = [
    (name, {
        "ssh_hostname": addr,
        "ssh_user": "root",
        "ssh_key": _key,
        "ssh_known_hosts_file": _known,
        "ssh_strict_host_key_checking": "yes",
    })
    for name, addr in (("m1", "10.215.1.10"), ("m2", "10.215.1.11"))
]
