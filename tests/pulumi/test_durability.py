"""Identity and data outlive every change: durable key names, protection, retention, safe
replaces, escrow and re-import, and image references that follow every build input.

Resource options are read from what the program passed to ``pulumi.Resource.__init__``
(recorded by the harness); aliases are resolved to the URNs the engine would look up.
"""

from __future__ import annotations

import json
import stat

import pytest

from components import escrow
from components.image import image_tag
from conftest import FQRN, docker_config, kubernetes_config
from harness import REPO_ROOT, fake_digest, run_program

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
CERT = "tls:index/selfSignedCert:SelfSignedCert"
KEYS = "cvmfs-ephemeral:index:RepositoryKeys"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
NAMESPACE = "kubernetes:core/v1:Namespace"
VOLUME = "docker:index/volume:Volume"
NETWORK = "docker:index/network:Network"
CONTAINER = "docker:index/container:Container"


def key_resources(program):
    return [r for r in program if r.type in (PRIVATE_KEY, CERT)]


@pytest.mark.parametrize("make_config", [docker_config, kubernetes_config])
def test_key_names_do_not_depend_on_the_stack_name(make_config):
    a = run_program(make_config())
    b = run_program(make_config(name="renamed"))
    names_a = sorted((r.type, r.name) for r in key_resources(a))
    assert names_a == sorted((r.type, r.name) for r in key_resources(b))
    assert (PRIVATE_KEY, f"{FQRN}-master-key") in names_a
    assert (PRIVATE_KEY, f"{FQRN}-repository-key") in names_a
    assert (CERT, f"{FQRN}-certificate") in names_a
    # Same names, same mocked keys: the rename serves the same public key.
    assert a.outputs["publicKeys"] == b.outputs["publicKeys"]


def test_existing_stacks_keep_their_key_urns_through_aliases(docker_program):
    """Before durable names, the keys were `<name>-<fqrn>-master-key` under `<name>-<fqrn>`."""
    master = docker_program.get(PRIVATE_KEY, f"{FQRN}-master-key")
    assert [a.name for a in master.opts.aliases] == [f"cvmfs-test-{FQRN}-master-key"]
    # As sent to the engine: only the name differs; type, project, stack and parent are the
    # resource's own (an empty parentUrn inherits the current parent). A URN is the parents'
    # types plus the name, so this is exactly the URN the old program registered.
    assert master.alias_specs == [{"spec": {"name": f"cvmfs-test-{FQRN}-master-key",
                                            "parentUrn": ""}}]
    assert master.parent.endswith(f"cvmfs-ephemeral:index:RepositoryKeys::keys-{FQRN}")
    component = docker_program.get(KEYS, f"keys-{FQRN}")
    assert [a.name for a in component.opts.aliases] == [f"cvmfs-test-{FQRN}"]
    assert component.alias_specs == [{"spec": {"name": f"cvmfs-test-{FQRN}", "parentUrn": ""}}]
    for r in key_resources(docker_program):
        assert len(r.opts.aliases) == 1 and r.opts.aliases[0].name.startswith("cvmfs-test-")


@pytest.mark.parametrize("make_config", [docker_config, kubernetes_config])
def test_keys_are_protected_by_default_and_configurably(make_config):
    protected = run_program(make_config())
    assert {r.opts.protect for r in key_resources(protected)} == {True}
    assert len(key_resources(protected)) == 6  # two repositories
    unprotected = run_program(make_config(keys={"protect": False}))
    assert {r.opts.protect for r in key_resources(unprotected)} == {False}


def test_docker_data_volume_is_protected_and_retained(docker_program):
    data = docker_program.get(VOLUME, "cvmfs-test-data")
    assert data.opts.protect is True and data.opts.retain_on_delete is True
    allowed = run_program(docker_config(storage={"kind": "persistent", "allowReplace": True}))
    data = allowed.get(VOLUME, "cvmfs-test-data")
    assert not data.opts.protect and not data.opts.retain_on_delete
    # A tmpfs store holds nothing that outlives its container: nothing to protect.
    tmpfs = run_program(docker_config(storage={"kind": "ephemeral", "size": "1Gi"}))
    assert not tmpfs.get(VOLUME, "cvmfs-test-data").opts.protect


def test_kubernetes_claim_and_namespace_are_protected_and_retained(kubernetes_program):
    for typ, name in ((PVC, "cvmfs-test-data"), (NAMESPACE, "cvmfs")):
        r = kubernetes_program.get(typ, name)
        assert r.opts.protect is True and r.opts.retain_on_delete is True, name
    allowed = run_program(kubernetes_config(storage={"kind": "persistent", "allowReplace": True}))
    assert not allowed.get(PVC, "cvmfs-test-data").opts.protect
    assert not allowed.get(NAMESPACE, "cvmfs").opts.protect


def test_every_fixed_name_docker_resource_is_deleted_before_replace(docker_program):
    fixed = [r for r in docker_program if r.type in (VOLUME, NETWORK, CONTAINER)]
    assert len(fixed) == 12
    for r in fixed:
        assert "name" in r.inputs, r.name
        assert r.opts.delete_before_replace is True, (r.type, r.name)


def test_docker_containers_stop_gracefully_and_rotate_logs(docker_program):
    for c in docker_program.of_type(CONTAINER):
        if c.inputs.get("start") is False:
            continue
        assert c.inputs["destroyGraceSeconds"] > 60  # the runtime drains for 60 s
        assert c.inputs["stopTimeout"] == c.inputs["destroyGraceSeconds"]
        assert c.inputs["logDriver"] == "json-file"
        assert c.inputs["logOpts"] == {"max-size": "10m", "max-file": "3"}
        # nginx drains on SIGQUIT (SIGTERM is its fast shutdown); the runtime on SIGTERM.
        expected = "SIGQUIT" if c.name == "cvmfs-test-stratum0" else None
        assert c.inputs.get("stopSignal") == expected, c.name


def test_removed_repository_keys_leave_the_loader_volume():
    both = run_program(docker_config())
    one = docker_config(repositories=[{"fqrn": FQRN}], tokens=[{"token": "t" * 20}])
    single = run_program(one)
    for role in ("upload", "gateway"):
        before = both.get(VOLUME, f"cvmfs-test-{role}-files").inputs["name"]
        after = single.get(VOLUME, f"cvmfs-test-{role}-files").inputs["name"]
        # A new (empty) volume for the new file list: nightly's private keys are not carried on.
        assert before != after
        uploads = {u["file"] for u in single.get(CONTAINER, f"cvmfs-test-{role}-files").inputs["uploads"]}
        assert not [f for f in uploads if "nightly" in f]
    # Same files, same volume: no churn on an unrelated change.
    assert run_program(docker_config(logLevel="debug")).get(
        VOLUME, "cvmfs-test-upload-files").inputs["name"] == both.get(
        VOLUME, "cvmfs-test-upload-files").inputs["name"]


# -- escrow and re-import ----------------------------------------------------------------------


def test_keys_round_trip_through_escrow_into_a_new_stack(tmp_path, docker_program):
    """Export the keys of one stack, rebuild a stack from the backup alone: same repository
    identity (public key, certificate fingerprint) and the same key files for the writer."""
    backup = tmp_path / "keys"
    escrow_output = docker_program.outputs["keyEscrow"]
    escrow.export_keys(escrow_output, backup)
    files = sorted(p.name for p in backup.iterdir())
    assert files == sorted(
        ["FINGERPRINTS"] + [f"{f}{s}" for f in (FQRN, "nightly.example.org")
                            for s in (".masterkey", ".key", ".crt", ".pub")]
    )
    assert stat.S_IMODE((backup / f"{FQRN}.masterkey").stat().st_mode) == 0o400
    assert stat.S_IMODE((backup / f"{FQRN}.pub").stat().st_mode) == 0o444
    assert (backup / f"{FQRN}.pub").read_text() == docker_program.outputs["publicKeys"][FQRN]
    fingerprint = docker_program.outputs["repositories"][FQRN]["certificateFingerprint"]
    assert f"{FQRN} {fingerprint}" in (backup / "FINGERPRINTS").read_text()

    imported = escrow.import_keys(backup)
    rebuilt = run_program(docker_config(name="rebuilt", importedKeys=imported))
    assert not key_resources(rebuilt)  # nothing generated
    assert rebuilt.outputs["publicKeys"] == docker_program.outputs["publicKeys"]
    assert rebuilt.outputs["repositories"][FQRN]["certificateFingerprint"] == fingerprint
    old = {u["file"]: u["content"] for u in docker_program.get(
        CONTAINER, "cvmfs-test-upload-files").inputs["uploads"]}
    new = {u["file"]: u["content"] for u in rebuilt.get(
        CONTAINER, "rebuilt-upload-files").inputs["uploads"]}
    keys = [f for f in old if "/keys/" in f]
    assert len(keys) == 8 and {f: new[f] for f in keys} == {f: old[f] for f in keys}


def test_escrow_cli_pipes(tmp_path, docker_program, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(docker_program.outputs["keyEscrow"])))
    assert escrow.main(["export", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert escrow.main(["import", str(tmp_path / "k")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed) == [FQRN, "nightly.example.org"]
    assert set(printed[FQRN]) == {"masterKey", "repositoryKey", "certificate"}


def test_escrow_refuses_inconsistent_keys(tmp_path, docker_program):
    backup = tmp_path / "keys"
    escrow.export_keys(docker_program.outputs["keyEscrow"], backup)
    # Another repository's certificate: manifests would not verify.
    (backup / f"{FQRN}.crt").chmod(0o644)
    (backup / f"{FQRN}.crt").write_text((backup / "nightly.example.org.crt").read_text())
    with pytest.raises(escrow.EscrowError, match="does not belong"):
        escrow.import_keys(backup)
    # A missing file is named.
    (backup / f"{FQRN}.crt").unlink()
    with pytest.raises(escrow.EscrowError, match=f"{FQRN}.crt is missing"):
        escrow.import_keys(backup)
    with pytest.raises(escrow.EscrowError, match="no repository keys"):
        escrow.export_keys({}, tmp_path / "empty")


def test_key_escrow_output_is_secret(docker_program):
    from harness import is_secret

    assert is_secret(docker_program.outputs_raw["keyEscrow"])


# -- the image reference follows every build input ---------------------------------------------


def _image(program):
    return program.get("docker:index/image:Image", "cvmfs-test-image").inputs


def test_image_tag_follows_base_image_and_build_args():
    default = _image(run_program(docker_config()))["imageName"]
    other_base = _image(run_program(docker_config(image={"baseImage": "debian:bookworm-slim"})))
    assert other_base["build"]["args"] == {"BASE_IMAGE": "debian:bookworm-slim"}
    assert other_base["imageName"] != default
    assert default.endswith(":" + image_tag())
    assert image_tag(REPO_ROOT, {"BASE_IMAGE": "a"}) != image_tag(REPO_ROOT, {"BASE_IMAGE": "b"})
    assert image_tag(REPO_ROOT, dockerfile="other/Dockerfile") != image_tag(REPO_ROOT)


def test_kubernetes_workloads_run_the_pushed_digest(kubernetes_program):
    image = kubernetes_program.get("docker:index/image:Image", "cvmfs-test-image").inputs
    digest = f"registry.example.org/cvmfs-ephemeral@{fake_digest(image['imageName'])}"
    s0 = kubernetes_program.get("docker:index/image:Image", "cvmfs-test-image-stratum0").inputs
    s0_digest = f"registry.example.org/cvmfs-ephemeral-stratum0@{fake_digest(s0['imageName'])}"
    images = {}
    for r in kubernetes_program:
        spec = r.inputs.get("spec", {}) if r.type.startswith("kubernetes:") else {}
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            images[r.name] = {c["image"] for c in template["spec"]["containers"]}
    assert images.pop("cvmfs-test-stratum0") == {s0_digest}
    assert set().union(*images.values()) == {digest}
    assert kubernetes_program.outputs["image"] == digest


def test_a_runtime_change_leaves_the_read_path_alone():
    """The read path runs the stratum0 stage, whose tag hashes only what that stage copies: a
    new runtime revision replaces the upload service, never the stratum-0 container."""
    a = run_program(docker_config())
    b = run_program(docker_config(image={"revision": "build-2"}))
    new_tag = _image(b)
    assert new_tag["build"]["args"] == {"BASE_IMAGE": "cvmfs-ephemeral-base:bookworm",
                                        "REVISION": "build-2"}
    assert new_tag["imageName"] != _image(a)["imageName"]

    def declared(program, role):
        return program.get(CONTAINER, f"cvmfs-test-{role}").inputs

    assert declared(a, "stratum0") == declared(b, "stratum0")
    assert declared(a, "upload")["image"] != declared(b, "upload")["image"]
    # A change of what nginx serves with (its config) is a new stratum0 tag.
    assert image_tag(target="stratum0") != image_tag(target="runtime")


# -- the data store guard: a replacing change fails preview with a clear message ---------------

GUARD = "pulumi-python:dynamic:Resource"


def _guard_diff(old_config: dict, new_config: dict):
    """What the guard's provider answers the engine at preview, for a config change: its diff
    is given the old outputs (what create stored: the old inputs) and the new inputs."""
    from components.store_guard import _GuardProvider

    def inputs(config):
        program = run_program(config)
        (guard,) = program.of_type(GUARD)
        return {k: v for k, v in guard.inputs.items() if not k.startswith("__")}

    old, new = inputs(old_config), inputs(new_config)
    provider = _GuardProvider()
    created = provider.create(old)
    return provider.diff(created.id, created.outs, new)


def test_the_store_depends_on_its_guard(docker_program, kubernetes_program):
    for program, typ, name in ((docker_program, VOLUME, "cvmfs-test-data"),
                               (kubernetes_program, PVC, "cvmfs-test-data")):
        (guard,) = program.of_type(GUARD)
        assert guard.name == "cvmfs-test-data-guard"
        assert any(u.endswith("::cvmfs-test-data-guard") for u in program.get(typ, name).depends_on)
    (guard,) = kubernetes_program.of_type(GUARD)
    assert guard.inputs["identity"] == {
        "kind": "persistent", "namespace": "cvmfs", "name": "cvmfs-test-data",
        "storageClass": None, "accessMode": "ReadWriteOnce"}


@pytest.mark.parametrize("change, named", [
    ({"kubernetes": {"namespace": "elsewhere"}}, "namespace: 'cvmfs' -> 'elsewhere'"),
    ({"storage": {"kind": "persistent", "storageClass": "fast-ssd"}},
     "storageClass: None -> 'fast-ssd'"),
    ({"storage": {"kind": "persistent", "accessMode": "ReadWriteMany"}},
     "accessMode: 'ReadWriteOnce' -> 'ReadWriteMany'"),
    ({"storage": {"kind": "ephemeral"}}, "kind: 'persistent' -> 'ephemeral'"),
    ({"name": "renamed"}, "name: 'cvmfs-test-data' -> 'renamed-data'"),
])
def test_a_replacing_kubernetes_change_fails_preview_with_a_clear_message(change, named):
    from components.store_guard import DataStoreReplaceRefused

    with pytest.raises(DataStoreReplaceRefused) as refused:
        _guard_diff(kubernetes_config(), kubernetes_config(**change))
    message = str(refused.value)
    assert "would replace the data store PersistentVolumeClaim cvmfs/cvmfs-test-data" in message
    assert "storage.allowReplace" in message
    assert named in message, message


def test_docker_store_change_is_refused_and_allowed_on_request():
    from components.store_guard import DataStoreReplaceRefused

    with pytest.raises(DataStoreReplaceRefused, match="docker volume cvmfs-test-data"):
        _guard_diff(docker_config(), docker_config(storage={"kind": "ephemeral", "size": "1Gi"}))
    allowed = _guard_diff(
        docker_config(),
        docker_config(storage={"kind": "ephemeral", "size": "1Gi", "allowReplace": True}))
    assert allowed.changes and allowed.replaces == ["identity"]


def test_unrelated_changes_pass_the_guard():
    assert not _guard_diff(docker_config(), docker_config(logLevel="debug")).changes
    assert not _guard_diff(kubernetes_config(), kubernetes_config(
        storage={"kind": "persistent", "size": "20Gi"})).changes  # a claim grows in place
    # An ephemeral store loses nothing that would have outlived it.
    tmpfs = docker_config(storage={"kind": "ephemeral", "size": "1Gi"})
    assert _guard_diff(tmpfs, docker_config(storage={"kind": "ephemeral", "size": "2Gi"})).changes
