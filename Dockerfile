# The Savepoint gateway.
#
#   docker build -t savepoint .
#   docker run --rm -p 127.0.0.1:8080:8080 -e SAVEPOINT_API_KEY=sp-choose-a-key savepoint
#
# then use http://127.0.0.1:8080/v1 with api_key=sp-choose-a-key. Your own policy replaces the
# built-in one:  -v "$PWD/policy.yaml:/etc/savepoint/policy.yaml:ro"
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin savepoint \
    && mkdir -p /data /etc/savepoint \
    && chown savepoint:savepoint /data

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
RUN pip install --no-cache-dir .

# The shipped policies, for --policy /usr/share/savepoint/policies/examples/... A file in
# policies/ may be a symlink into gateway/ (default.yaml is): -L copies what it points to.
COPY policies/ policies/
RUN mkdir -p /usr/share/savepoint && cp -rL policies /usr/share/savepoint/ && rm -rf /src

# A relative store.path in a mounted policy (the default is .savepoint/savepoint.db) lands on
# the volume too. A bind-mounted /data must be writable by uid 10001.
WORKDIR /data

# The built-in policy is policies/default.yaml with two sections added:
#
# - clients: a container must listen on 0.0.0.0, and `savepoint serve` refuses a non-loopback
#   address when the policy has no clients, because anyone who reached the port could spend
#   the provider keys (and `docker run -p 8080:8080` publishes on every interface of the host).
#   So the image asks for one client key, read from SAVEPOINT_API_KEY when the gateway starts;
#   without it the container exits at once with a message naming the variable. Passing
#   --insecure-no-auth instead would make an open gateway the default; docker-compose.yaml does
#   that for local use only, with the port published on 127.0.0.1.
# - store.path: the SQLite store on the /data volume.
#
# The build checks the result, so a change to default.yaml that breaks it fails here.
RUN cat /usr/share/savepoint/policies/default.yaml > /etc/savepoint/policy.yaml \
    && printf '%s\n' '' \
        '# Added by the Dockerfile: authentication with the key in SAVEPOINT_API_KEY, and the' \
        '# store on the /data volume.' \
        'store:' \
        '  path: /data/savepoint.db' \
        'clients:' \
        '  default:' \
        '    key_env: SAVEPOINT_API_KEY' \
        >> /etc/savepoint/policy.yaml \
    && SAVEPOINT_API_KEY=build-check savepoint check /etc/savepoint/policy.yaml

VOLUME ["/data"]
USER savepoint

EXPOSE 8080
# No curl in the slim image. The port matches the CMD below; change both together.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# One worker process per CPU the container may use (its cpuset, or its CPU quota:
# `docker run --cpus 2` gives 2); to choose, run the CMD below with `--workers N` added. On SIGTERM
# every worker drains in-flight requests for up to server.drain_timeout (30s by default);
# `docker stop` kills after 10s unless given more: docker stop -t 40.
CMD ["savepoint", "serve", "--host", "0.0.0.0", "--port", "8080", "--policy", "/etc/savepoint/policy.yaml"]
