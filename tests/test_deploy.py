"""deploy/ against the code: every manifest names only commands, settings, ports, probe paths and
metric names that exist. Static: no Docker engine, no cluster, no server.

- commands: each container's command parses with the real CLI parser (apiinone.cli.build_parser);
- env vars: each one a manifest sets is a field (or alias) of shared.settings.Settings, a provider
  variable of the catalog, or a conventional Python/pip one, and the values validate;
- ports and probes: gateway probes hit routes of gateway.app.create_app, metrics ports match
  --metrics-port, Services/annotations/proxy point at ports that containers open;
- secrets: the provider key reaches worker pods only;
- Grafana: the dashboard queries only metric names and labels defined in shared.metrics.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) parses the deploy manifests")

from prometheus_client.metrics import MetricWrapperBase  # noqa: E402
from pydantic import AliasChoices, ValidationError  # noqa: E402

import shared.metrics as metrics  # noqa: E402
from shared import account_storage  # noqa: E402
from shared.catalog import BUNDLED_CATALOG, load_catalog  # noqa: E402
from apiinone.cli import build_parser  # noqa: E402
from shared.settings import Settings  # noqa: E402
from worker.key_config import env_name as key_pool_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
NGINX = DEPLOY / "nginx.conf"

CATALOG = load_catalog(BUNDLED_CATALOG)
# A node's provider key, or its pool of keys (worker/key_config.py): secrets for that node's workers.
PROVIDER_KEY_VARS = ({p.api_key_env for p in CATALOG.providers.values() if p.api_key_env}
                     | {key_pool_env(node) for node in CATALOG.nodes})
PROVIDER_URL_VARS = {p.base_url_env for p in CATALOG.providers.values() if p.base_url_env}
# Read by the Python runtime or pip, not by apiinone.
CONVENTIONAL_VARS = {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONFAULTHANDLER", "PIP_NO_CACHE_DIR",
                     "PIP_DISABLE_PIP_VERSION_CHECK", "TZ"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "service"}
ROLES = {"gateway", "worker", "billing-worker", "batch-worker", "archiver", "simulator"}
USES_DATABASE = {"gateway", "batch-worker", "archiver"}  # the record's readers and writers (never the request path)


WORKER_DRAIN_S = Settings.model_fields["worker_drain_s"].default  # how long SIGTERM lets in-flight streams finish


# --- the code's side -------------------------------------------------------------------------


def setting_env_names() -> dict[str, str]:
    """Environment variable (upper case) -> Settings field."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            envs = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            envs = [alias]
        else:
            envs = [prefix + field_name]
        for env in envs:
            names[env.upper()] = field_name
    return names


SETTING_ENV = setting_env_names()
KNOWN_VARS = set(SETTING_ENV) | PROVIDER_KEY_VARS | PROVIDER_URL_VARS | CONVENTIONAL_VARS


def field_default(name: str):
    return Settings.model_fields[name].default


def settings_from(env: dict[str, str], monkeypatch) -> Settings:
    """Settings as a process with exactly this environment would read them (values validated)."""
    import os

    with monkeypatch.context() as m:
        for var in list(os.environ):
            if var.upper() in SETTING_ENV:
                m.delenv(var)
        for var, value in env.items():
            m.setenv(var, str(value))
        try:
            return Settings()
        except ValidationError as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"manifest values do not validate as Settings: {exc}")


def parse_command(argv: list[str]):
    assert argv, "empty command"
    try:
        return build_parser().parse_args([str(a) for a in argv])
    except SystemExit:
        pytest.fail(f"`apiinone {shlex.join(map(str, argv))}` does not parse with apiinone.cli.build_parser")


@pytest.fixture(scope="module")
def gateway_routes() -> set[tuple[str, str]]:
    from gateway.app import create_app

    app = create_app(Settings(admin_token="adm_deploy_test_token", redis_url="redis://127.0.0.1:1/0"))
    return {(route.method, route.resource.canonical) for route in app.router.routes()
            if route.resource is not None}


def metric_families() -> dict[str, tuple[str, set[str], tuple[str, ...]]]:
    """Family name -> (type, sample names, label names) for every metric in shared.metrics."""
    families = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        (desc,) = obj.describe()
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                    "summary": ["", "_sum", "_count"], "gauge": [""], "info": ["_info"]}[desc.type]
        families[desc.name] = (desc.type, {desc.name + s for s in suffixes}, tuple(obj._labelnames))
    return families


METRICS = metric_families()
SAMPLE_LABELS = {sample: set(labels) for _t, samples, labels in METRICS.values() for sample in samples}
# The gateway's storage gauges, read from the record per scrape (shared/account_storage.py).
SAMPLE_LABELS |= {name: set(labels) for name, labels in account_storage.SERIES.items()}


# --- compose interpolation (the subset of the Compose spec the file uses) ----------------------


def interpolate(text: str, env: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                if j >= len(text):
                    raise ValueError(f"unclosed ${{ in {text!r}")
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                if text[j] == "}":
                    depth -= 1
                j += 1
            out.append(_expression(text[i + 2:j - 1], env))
            i = j
        elif text[i] == "$" and (m := re.match(r"[A-Za-z_]\w*", text[i + 1:])):
            out.append(env.get(m.group(0), ""))
            i += 1 + m.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expression(body: str, env: dict[str, str]) -> str:
    m = re.fullmatch(r"([A-Za-z_]\w*)(?:(:?[-+?])(.*))?", body, re.S)
    assert m, f"unsupported interpolation ${{{body}}}"
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    value = env.get(name)
    present, nonempty = value is not None, bool(value)
    ok = nonempty if op and op.startswith(":") else present
    if op is None:
        return value or ""
    if op.endswith("-"):
        return value if ok else interpolate(arg, env)
    if op.endswith("+"):
        return interpolate(arg, env) if ok else ""
    if not ok:  # ? / :?
        raise LookupError(interpolate(arg, env))
    return value


def _interpolate_tree(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v, env) for k, v in node.items()}
    return node


DEMO_ENV = {"APIINONE_ADMIN_TOKEN": "adm_compose_test"}
LIVE_ENV = {**DEMO_ENV, "GEMINI_API_KEY": "real-key-for-test"}


def load_compose(env: dict[str, str]) -> dict:
    raw = yaml.safe_load(COMPOSE.read_text())
    return _interpolate_tree(raw, env)


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def service_env(svc: dict) -> dict[str, str]:
    """The environment a compose service's container gets: env_file(s), then `environment`."""
    env: dict[str, str] = {}
    files = svc.get("env_file") or []
    for entry in [files] if isinstance(files, (str, dict)) else files:
        path = entry["path"] if isinstance(entry, dict) else entry
        full = (DEPLOY / path).resolve()
        assert full.is_file(), f"env_file {path} (resolved {full}) does not exist"
        env.update(read_env_file(full))
    environment = svc.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    env.update({k: "" if v is None else str(v) for k, v in environment.items()})
    return env


def apiinone_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items()
            if (svc.get("build") or {}).get("dockerfile") == "deploy/Dockerfile"
            or svc.get("image") == compose["services"].get("gateway-1", {}).get("image")}


def role_of(argv: list[str]) -> str:
    return str(argv[0])


def duration_s(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text)):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# --- compose ---------------------------------------------------------------------------------


def test_compose_requires_admin_token():
    with pytest.raises(LookupError, match="APIINONE_ADMIN_TOKEN"):
        load_compose({})


@pytest.mark.parametrize("env", [DEMO_ENV, LIVE_ENV], ids=["demo", "live"])
def test_compose_commands_env_and_ports(env, gateway_routes, monkeypatch):
    compose = load_compose(env)
    services = compose["services"]
    ours = apiinone_services(compose)
    build = services["gateway-1"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert (DEPLOY / build["context"] / "pyproject.toml").is_file(), "build context is not the repository root"

    roles: dict[str, list[str]] = {}
    for name, svc in ours.items():
        argv = svc["command"]
        assert isinstance(argv, list), f"{name}: use the exec (list) form of command"
        args = parse_command(argv)
        roles.setdefault(role_of(argv), []).append(name)
        senv = service_env(svc)
        unknown = sorted(set(senv) - KNOWN_VARS)
        assert not unknown, f"{name} sets env vars no setting reads: {unknown}"
        settings = settings_from(senv, monkeypatch)
        exposed = {int(p) for p in svc.get("expose", [])}

        if args.command == "gateway":
            assert settings.host == "0.0.0.0", f"{name}: the gateway must listen on 0.0.0.0 in a container"
            assert settings.admin_token == env["APIINONE_ADMIN_TOKEN"]
            assert exposed == {settings.port}
            url = urlsplit(svc["healthcheck"]["test"][-1].split("'")[1])
            assert url.port == settings.port and ("GET", url.path) in gateway_routes
        elif args.command in ("worker", "billing-worker", "batch-worker", "archiver"):
            assert args.metrics_port and exposed == {args.metrics_port}
            assert settings.metrics_host == "0.0.0.0", f"{name}: metrics must bind 0.0.0.0 in a container"
            assert duration_s(svc["stop_grace_period"]) > WORKER_DRAIN_S
        elif args.command == "simulator":
            assert svc.get("profiles") == ["demo"]
            assert args.host == "0.0.0.0" and exposed == {args.port}

        if args.command in ("gateway", "worker", "billing-worker", "batch-worker", "archiver"):
            redis = urlsplit(settings.redis_url)
            assert redis.hostname in services and services[redis.hostname]["image"].startswith("valkey/valkey")
            assert svc["depends_on"][redis.hostname]["condition"] == "service_healthy"
        if args.command in USES_DATABASE:
            db = urlsplit(settings.database_url)
            assert db.scheme == "postgresql" and db.hostname in services, f"{name}: DATABASE_URL names no service"
            pg = services[db.hostname]
            assert pg["image"].startswith("postgres:") and svc["depends_on"][db.hostname]["condition"] == "service_healthy"
            assert db.path.lstrip("/") == service_env(pg)["POSTGRES_DB"] and db.username == service_env(pg)["POSTGRES_USER"]
            assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"]), "Postgres keeps its data"
        if args.command != "worker":
            leaked = PROVIDER_KEY_VARS & set(senv)
            assert not leaked, f"{name} ({args.command}) gets a provider key: {leaked}"

    assert sorted(roles) == sorted(ROLES)
    assert len(roles["gateway"]) == 2, "two gateways behind the proxy"
    for node in CATALOG.nodes:
        pools = [n for n in roles["worker"] if parse_command(ours[n]["command"]).node == node]
        assert len(pools) == 1, f"one worker pool service for node {node}"
        assert ours[pools[0]]["deploy"]["replicas"] == 2

    worker = ours[roles["worker"][0]]
    wenv = service_env(worker)
    base = urlsplit(wenv["GEMINI_BASE_URL"])
    if "GEMINI_API_KEY" in env:
        assert wenv["GEMINI_API_KEY"] == env["GEMINI_API_KEY"]
        assert base.scheme == "https" and base.hostname == "generativelanguage.googleapis.com"
    else:  # pointed at the demo profile's simulator
        sim = services[base.hostname]
        assert sim is ours[roles["simulator"][0]]
        assert base.port == parse_command(sim["command"]).port and wenv["GEMINI_API_KEY"]


def test_compose_valkey_and_proxy(gateway_routes):
    compose = load_compose(DEMO_ENV)
    services = compose["services"]
    valkey = services["valkey"]
    assert valkey["image"].startswith("valkey/valkey")
    cmd = valkey["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes", "Valkey must run with AOF"
    assert any(v.endswith(":/data") for v in valkey["volumes"]) and "valkey-data" in compose["volumes"]

    proxy = services["proxy"]
    (mount,) = [v for v in proxy["volumes"] if "nginx" in v]
    source, target = mount.split(":")[:2]
    assert (DEPLOY / source).resolve() == NGINX and target.startswith("/etc/nginx/")
    conf = NGINX.read_text()
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    gateways = {n for n, s in services.items() if s.get("command") == ["gateway"]}
    assert {host for host, _ in upstreams} == gateways
    for host, port in upstreams:
        assert int(port) == int(service_env(services[host])["APIINONE_PORT"])
    (listen,) = re.findall(r"^\s*listen\s+(\d+);", conf, re.M)
    assert any(p.split(":")[-1] == listen for p in proxy["ports"])
    assert re.search(r"proxy_buffering\s+off;", conf), "SSE needs proxy_buffering off"
    read_timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", conf).group(1))
    assert read_timeout > field_default("request_timeout_s")
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    assert int(body) * 1024 * 1024 >= field_default("max_body_bytes")
    for path in re.findall(r"location\s+=?\s*(/\S*)\s*\{", conf):
        assert path == "/" or ("GET", path) in gateway_routes


def nginx_seconds(conf: str, directive: str) -> float:
    (value,) = re.findall(rf"^\s*{directive}\s+(\S+);", conf, re.M)
    return duration_s(value) if not value.isdigit() else float(value)


def test_proxy_bounds_slow_clients_and_is_the_gateways_only_trusted_proxy():
    compose = load_compose(DEMO_ENV)
    services = compose["services"]
    conf = NGINX.read_text()
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", conf, re.S).group(1)
    server = conf[conf.index("server {"):]
    # Connections per client address, and timeouts for clients that send a head, a body or nothing slowly.
    zone = re.search(r"limit_conn_zone\s+\$binary_remote_addr\s+zone=(\w+):", conf).group(1)
    assert 0 < int(re.search(rf"limit_conn\s+{zone}\s+(\d+);", server).group(1)) <= 256
    assert 0 < nginx_seconds(server, "client_header_timeout") <= field_default("header_timeout_s")
    assert 0 < nginx_seconds(server, "client_body_timeout") <= 60
    assert 0 < nginx_seconds(server, "keepalive_timeout") <= 75
    # The proxy gives up idle upstream connections before the gateways close them.
    assert nginx_seconds(upstream, "keepalive_timeout") < field_default("keepalive_timeout_s")
    # The client's address as the proxy saw it, believed from the proxy alone.
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$(remote_addr|proxy_add_x_forwarded_for);", conf)
    proxy_address = services["proxy"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(proxy_address) in ipaddress.ip_network(subnet)
    for name, svc in apiinone_services(compose).items():
        if svc["command"] == ["gateway"]:
            trusted = service_env(svc)["APIINONE_TRUSTED_PROXIES"].split(",")
            assert trusted == [proxy_address], f"{name} trusts {trusted}, not only the proxy"


# --- kubernetes ------------------------------------------------------------------------------


def k8s_docs() -> list[tuple[Path, dict]]:
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    assert files, "no Kubernetes manifests"
    docs = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


DOCS = k8s_docs()


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _p, d in DOCS if d["kind"] == kind}


def pod_containers(deploy: dict) -> list[dict]:
    spec = deploy["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def container_argv(c: dict) -> list[str]:
    command = c.get("command")
    assert command in (None, ["apiinone"]), f"{c['name']}: command must be the image's `apiinone` entry point"
    return [str(a) for a in c.get("args", [])]


def container_env(c: dict) -> tuple[dict[str, str | None], set[str]]:
    """(env var -> literal value or None when it comes from a Secret, Secrets referenced)."""
    configmaps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    env: dict[str, str | None] = {}
    used_secrets: set[str] = set()
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]]["data"])
        if "secretRef" in src:
            name = src["secretRef"]["name"]
            used_secrets.add(name)
            env.update({k: None for k in {**secrets[name].get("data", {}), **secrets[name].get("stringData", {})}})
    for var in c.get("env", []):
        ref = var.get("valueFrom", {})
        if "secretKeyRef" in ref:
            name, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            assert name in secrets, f"env {var['name']}: no Secret {name} in deploy/k8s"
            # an optional key (a node's pool of keys) may be left out of the template
            assert ref["secretKeyRef"].get("optional") or key in {**secrets[name].get("data", {}),
                                                                  **secrets[name].get("stringData", {})}
            used_secrets.add(name)
            env[var["name"]] = None
        elif "configMapKeyRef" in ref:
            name, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            env[var["name"]] = configmaps[name]["data"][key]
        else:
            env[var["name"]] = str(var.get("value", ""))
    return env, used_secrets


def pod_secrets(deploy: dict) -> set[str]:
    spec = deploy["spec"]["template"]["spec"]
    names = set()
    for c in pod_containers(deploy):
        names |= container_env(c)[1]
    for vol in spec.get("volumes", []):
        if "secret" in vol:
            names.add(vol["secret"]["secretName"])
        for src in vol.get("projected", {}).get("sources", []):
            if "secret" in src:
                names.add(src["secret"]["name"])
    return names


def deployments_by_role() -> dict[str, list[dict]]:
    roles: dict[str, list[dict]] = {}
    for d in by_kind("Deployment").values():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        roles.setdefault(parse_command(container_argv(c)).command, []).append(d)
    return roles


def resolve_port(c: dict, port) -> int:
    for p in c.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    pytest.fail(f"{c['name']}: port {port!r} is not a containerPort")


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_manifests_are_namespace_agnostic():
    kinds = {d["kind"] for _p, d in DOCS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "Secret", "Ingress"} <= kinds
    for path, doc in DOCS:
        assert doc.get("apiVersion") and doc["metadata"].get("name"), path
        assert "namespace" not in doc["metadata"], f"{path}: {doc['metadata']['name']} pins a namespace"


def test_k8s_commands_env_ports_and_probes(gateway_routes, monkeypatch):
    roles = deployments_by_role()
    assert set(roles) == {"gateway", "worker", "billing-worker", "batch-worker", "archiver"}
    for d in by_kind("Deployment").values():
        name = d["metadata"]["name"]
        template = d["spec"]["template"]
        assert selects(d["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), name
        (c,) = template["spec"]["containers"]
        args = parse_command(container_argv(c))
        env, _ = container_env(c)
        unknown = sorted(set(env) - KNOWN_VARS)
        assert not unknown, f"{name} sets env vars no setting reads: {unknown}"
        settings = settings_from({k: v if v is not None else "x" for k, v in env.items()}, monkeypatch)
        assert env.get("REDIS_URL", "") is None, f"{name}: REDIS_URL (may carry a password) from a Secret"
        if args.command in USES_DATABASE:
            assert env.get("DATABASE_URL", "") is None, f"{name}: DATABASE_URL (carries a password) from a Secret"

        probes = {kind: c[kind] for kind in ("readinessProbe", "livenessProbe", "startupProbe") if kind in c}
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", f"{name}: not annotated for scraping"
        scrape_port = int(annotations["prometheus.io/port"])
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"

        if args.command == "gateway":
            assert settings.host == "0.0.0.0", f"{name}: APIINONE_HOST must be 0.0.0.0 in a pod"
            assert [p["containerPort"] for p in c["ports"]] == [settings.port]
            assert env.get("APIINONE_ADMIN_TOKEN", "") is None, "admin token from a Secret"
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            for probe in probes.values():
                assert resolve_port(c, probe["httpGet"]["port"]) == settings.port
                assert ("GET", probe["httpGet"]["path"]) in gateway_routes
            assert scrape_port == settings.port and ("GET", "/metrics") in gateway_routes
        else:
            assert args.metrics_port, f"{name}: workers serve /metrics only with --metrics-port"
            assert [p["containerPort"] for p in c["ports"]] == [args.metrics_port]
            assert settings.metrics_host == "0.0.0.0", f"{name}: APIINONE_METRICS_HOST must be 0.0.0.0 in a pod"
            assert scrape_port == args.metrics_port
            for probe in probes.values():  # prometheus_client's server answers /metrics, nothing else of ours
                assert probe["httpGet"]["path"] == "/metrics"
                assert resolve_port(c, probe["httpGet"]["port"]) == args.metrics_port
        if args.command == "worker":
            assert args.node in CATALOG.nodes
            assert template["spec"]["terminationGracePeriodSeconds"] > WORKER_DRAIN_S, \
                f"{name}: the grace period must outlast the {WORKER_DRAIN_S} s drain"
            assert settings.gemini_api_key is not None


def test_k8s_one_worker_deployment_per_node():
    workers = deployments_by_role()["worker"]
    nodes = [parse_command(container_argv(d["spec"]["template"]["spec"]["containers"][0])).node for d in workers]
    assert sorted(nodes) == sorted(CATALOG.nodes)


def test_k8s_provider_keys_reach_workers_only():
    secrets = by_kind("Secret")
    provider_secrets = {name for name, s in secrets.items()
                        if PROVIDER_KEY_VARS & set({**s.get("data", {}), **s.get("stringData", {})})}
    assert provider_secrets, "no Secret holds a provider key"
    for name, s in secrets.items():
        values = {**s.get("data", {}), **s.get("stringData", {})}
        assert all("CHANGE_ME" in str(v) for v in values.values()), f"Secret {name}: placeholder values only"
    for cm in by_kind("ConfigMap").values():
        assert not PROVIDER_KEY_VARS & set(cm["data"]), "a provider key in a ConfigMap"

    for role, deployments in deployments_by_role().items():
        for d in deployments:
            (c,) = d["spec"]["template"]["spec"]["containers"]
            mounted = pod_secrets(d) & provider_secrets
            env, _ = container_env(c)
            if role == "worker":
                node = parse_command(container_argv(c)).node
                key_var = CATALOG.provider_of_node(node).api_key_env
                assert env.get(key_var, "") is None, f"{d['metadata']['name']}: {key_var} from a Secret"
                assert len(mounted) == 1
            else:
                assert not mounted, f"{d['metadata']['name']} ({role}) mounts provider key Secret {mounted}"
                assert not PROVIDER_KEY_VARS & set(env)


def test_k8s_gateway_service_hpa_pdb():
    (gateway,) = deployments_by_role()["gateway"]
    name = gateway["metadata"]["name"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]

    services = by_kind("Service")
    assert services, "no Service"
    for svc in services.values():
        assert selects(svc["spec"]["selector"], labels), f"Service {svc['metadata']['name']} misses the gateways"
        for port in svc["spec"]["ports"]:
            resolve_port(container, port.get("targetPort", port["port"]))

    (hpa,) = by_kind("HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    if any(m["type"] == "Resource" for m in hpa["spec"]["metrics"]):
        assert container["resources"]["requests"]["cpu"], "a CPU target needs CPU requests"
    assert "replicas" not in gateway["spec"], "the HPA owns the gateway replica count"

    (pdb,) = by_kind("PodDisruptionBudget").values()
    assert pdb["apiVersion"] == "policy/v1"
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)


def test_k8s_configmap_values_validate(monkeypatch):
    for name, cm in by_kind("ConfigMap").items():
        unknown = sorted(set(cm["data"]) - KNOWN_VARS)
        assert not unknown, f"ConfigMap {name}: {unknown} are not settings"
        assert all(isinstance(v, str) for v in cm["data"].values()), f"ConfigMap {name}: quote non-string values"
        settings_from(cm["data"], monkeypatch)


def test_k8s_ingress_terminates_tls_limits_clients_and_hides_metrics(gateway_routes):
    (ingress,) = by_kind("Ingress").values()
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    annotations = ingress["metadata"]["annotations"]
    nginx = {k.removeprefix("nginx.ingress.kubernetes.io/"): v for k, v in annotations.items()}
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert 0 < int(nginx["limit-connections"]) <= 256
    assert nginx["force-ssl-redirect"] == "true"
    assert nginx["proxy-buffering"] == "off", "SSE needs proxy buffering off"
    assert int(nginx["proxy-read-timeout"]) > field_default("request_timeout_s")
    assert int(nginx["proxy-body-size"].removesuffix("m")) * 1024 * 1024 >= field_default("max_body_bytes")

    (tls,) = ingress["spec"]["tls"]
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts and set(hosts) <= set(tls["hosts"]) and tls["secretName"]
    (config,) = by_kind("ConfigMap").values()
    public = urlsplit(config["data"]["APIINONE_PUBLIC_BASE_URL"])
    assert public.scheme == "https" and public.hostname in hosts, "cookies' Secure flag and HSTS follow this URL"

    (gateway,) = deployments_by_role()["gateway"]
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    services = by_kind("Service")
    routes = {path for _method, path in gateway_routes}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            service = services[path["backend"]["service"]["name"]]
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == path["backend"]["service"]["port"]["name"]]
            resolve_port(container, port["targetPort"])
            p = path["path"]
            served = [r for r in routes if r == p] if path["pathType"] == "Exact" else \
                [r for r in routes if r == p.rstrip("/") or r.startswith(p)]
            assert served, f"Ingress path {p} reaches no gateway route"
            assert not any(r == "/metrics" for r in served), "/metrics must stay off the public Ingress"


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_entrypoint_user_env_and_sources():
    ins = dockerfile_instructions()
    for base in [rest.split()[0] for op, rest in ins if op == "FROM"]:
        assert base == "python:3.11-slim"
    (entrypoint,) = [json.loads(rest) for op, rest in ins if op == "ENTRYPOINT"]
    (cmd,) = [json.loads(rest) for op, rest in ins if op == "CMD"]
    assert entrypoint == ["apiinone"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["apiinone"] == "apiinone.cli:main"
    assert parse_command(cmd).command == "gateway"

    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"

    for op, rest in ins:
        if op == "ENV":
            names = re.findall(r"(?:^|\s)([A-Za-z_]\w*)=", rest)
            assert names and not set(names) - KNOWN_VARS, f"ENV {rest}"
        if op == "RUN":
            assert not re.search(r"\b(curl|wget|git clone)\b", rest), "only pip downloads, from PyPI"
            assert not re.search(r"--(?:extra-)?index-url|-i\s+http", rest), "only PyPI"
        if op == "ADD":
            pytest.fail("use COPY; ADD can fetch URLs")
        if op == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository root (the build context)"

    exposed = {int(p) for op, rest in ins if op == "EXPOSE" for p in rest.split()}
    assert field_default("port") in exposed
    metric_ports = {int(a["prometheus.io/port"]) for d in by_kind("Deployment").values()
                    if (a := d["spec"]["template"]["metadata"].get("annotations"))}
    assert metric_ports <= exposed
    assert field_default("simulator_port") in exposed

    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for op, rest in ins:
        if op == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert "!" + src.rstrip("/") in [i.rstrip("/") for i in ignore], f"{src} excluded by .dockerignore"


# --- Grafana ---------------------------------------------------------------------------------


def dashboard_queries(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                out.append(value)
            else:
                out += dashboard_queries(value)
    elif isinstance(node, list):
        for value in node:
            out += dashboard_queries(value)
    return out


def test_grafana_dashboard_queries_real_metrics(gateway_routes):
    dash = json.loads(DASHBOARD.read_text())
    queries = [q for q in dashboard_queries(dash) if "apiinone_" in q]
    assert queries
    used = set()
    for q in queries:
        names = set(re.findall(r"\bapiinone_[a-z0-9_]+", q))
        unknown = names - set(SAMPLE_LABELS)
        assert not unknown, f"{q!r} queries metrics shared/metrics.py does not define: {unknown}"
        used |= names
        labels = set().union(*(SAMPLE_LABELS[n] for n in names)) | TARGET_LABELS
        if any(n.endswith("_bucket") for n in names):
            labels.add("le")
        named = set()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", q):
            named |= {s.strip() for s in group.split(",") if s.strip()}
        for selector in re.findall(r"\{([^{}]*)\}", q):
            named |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", selector))
            for route in re.findall(r"\broute\s*=\s*\"([^\"]+)\"", selector):
                assert any(r == route for _m, r in gateway_routes), f"no gateway route {route}"
        named |= set(re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", q))
        assert named <= labels, f"{q!r} uses labels the metrics do not have: {named - labels}"

    families = {name for name, (_t, samples, _l) in METRICS.items() if samples & used}
    wanted = {
        "request rate by status": "apiinone_http_requests",
        "TTFT": "apiinone_time_to_first_token_seconds",
        "queue wait": "apiinone_queue_wait_seconds",
        "in-flight per node": "apiinone_worker_inflight_jobs",
        "tokens": "apiinone_tokens",
        "credits charged": "apiinone_credits_charged_micro",
        "upstream errors": "apiinone_upstream_errors",
        "reconciled holds": "apiinone_reconciled_holds",
    }
    storage = {"stored bytes per account": "apiinone_account_stored_bytes", "blob store size": "apiinone_blob_store_bytes",
               "usage partitions": "apiinone_usage_partition_bytes"}
    assert not {what for what, name in storage.items() if name not in used}, "dashboard lacks storage panels"
    missing = {what: fam for what, fam in wanted.items() if fam not in families}
    assert not missing, f"dashboard lacks panels for {missing}"

    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    for q in queries:
        for var in re.findall(r"\$(?:\{)?(\w+)", q):
            assert var.startswith("__") or var in variables, f"{q!r}: unknown dashboard variable ${var}"
    ttft = [q for q in queries if "apiinone_time_to_first_token_seconds_bucket" in q]
    assert any("0.5" in q for q in ttft) and any("0.99" in q for q in ttft), "TTFT p50 and p99"
