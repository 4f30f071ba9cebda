#!/usr/bin/env bash
# The sandbox on a Kubernetes cluster: the infrastructure from its projects' own operators and charts (pinned
# below), the secrets, then the programs. Needs kubectl, helm and a cluster that pulls the image msa-sandbox:dev
# (kind: `docker compose build && kind load docker-image msa-sandbox:dev`).
#
#   deploy/k8s/install.sh dev     # one replica of everything: a one-node cluster (kind, minikube, k3d)
#   deploy/k8s/install.sh ha      # three of each, spread across nodes: three nodes or more
#
# The secrets come from the environment (MSA_ADMIN_TOKEN, ENCRYPT_KEY) and are made once; without them the demo
# values of .env.example are used, with a warning: config-repo's {cipher} values were made with that key. Each
# program's broker password and Consul token are made at random, once (least privilege: msa_kit.access).
set -euo pipefail

OVERLAY=${1:-dev}
NAMESPACE=msa
CONSUL_CHART=2.0.3            # hashicorp/consul-k8s, Consul 2.0.3
RABBITMQ_OPERATOR=v2.22.3     # rabbitmq/cluster-operator
CNPG=1.30.0                   # cloudnative-pg/cloudnative-pg
KUBE_PROMETHEUS_STACK=88.5.3  # prometheus-community/helm-charts (Prometheus Operator v0.93.1, Grafana)
JAEGER_CHART=4.11.1           # jaegertracing/helm-charts (Jaeger 2.19.0)
CERT_MANAGER=v1.21.1          # cert-manager/cert-manager: the topology operator's webhook certificates
TOPOLOGY_OPERATOR=v1.20.1     # rabbitmq/messaging-topology-operator: the broker's users and permissions
PROGRAMS="config-server user catalog order gateway probe console"  # msa_kit.access.PROGRAMS: a broker user each

case "$OVERLAY" in
  dev) REPLICAS=1 ;;
  ha) REPLICAS=3 ;;
  *) echo "usage: $0 dev|ha" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
render() { kubectl kustomize --load-restrictor LoadRestrictionsNone "$1"; }

echo "== operators"
kubectl apply -f "https://github.com/rabbitmq/cluster-operator/releases/download/${RABBITMQ_OPERATOR}/cluster-operator.yml"
kubectl apply --server-side -f \
  "https://raw.githubusercontent.com/cloudnative-pg/cloudnative-pg/release-${CNPG%.*}/releases/cnpg-${CNPG}.yaml"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER}/cert-manager.yaml"
kubectl -n rabbitmq-system rollout status deployment/rabbitmq-cluster-operator --timeout=180s
kubectl -n cnpg-system rollout status deployment/cnpg-controller-manager --timeout=180s
kubectl -n cert-manager rollout status deployment/cert-manager-webhook --timeout=180s
kubectl apply -f "https://github.com/rabbitmq/messaging-topology-operator/releases/download/${TOPOLOGY_OPERATOR}/messaging-topology-operator-with-certmanager.yaml"
kubectl -n rabbitmq-system rollout status deployment/messaging-topology-operator --timeout=180s

echo "== charts, in namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install consul consul --repo https://helm.releases.hashicorp.com --version "$CONSUL_CHART" \
  -n "$NAMESPACE" -f "$here/values/consul.yaml" --set server.replicas="$REPLICAS" --wait --timeout 10m
helm upgrade --install jaeger jaeger --repo https://jaegertracing.github.io/helm-charts --version "$JAEGER_CHART" \
  -n "$NAMESPACE" -f "$here/values/jaeger.yaml" --wait
helm upgrade --install monitoring kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts \
  --version "$KUBE_PROMETHEUS_STACK" -n "$NAMESPACE" -f "$here/values/kube-prometheus-stack.yaml" --wait --timeout 10m

echo "== secrets (made once; never stored in the repository)"
if ! kubectl -n "$NAMESPACE" get secret msa-secrets >/dev/null 2>&1; then
  if [ -z "${MSA_ADMIN_TOKEN:-}" ] || [ -z "${ENCRYPT_KEY:-}" ]; then
    echo "warning: MSA_ADMIN_TOKEN or ENCRYPT_KEY unset: using .env.example's demo values (a laptop only)" >&2
  fi
  kubectl -n "$NAMESPACE" create secret generic msa-secrets \
    --from-literal=admin-token="${MSA_ADMIN_TOKEN:-sandbox-admin-token}" \
    --from-literal=encrypt-key="${ENCRYPT_KEY:-msa-sandbox-demo-key}"
fi
make_secret() { python3 -c "import secrets, sys, uuid; print(uuid.uuid4() if sys.argv[1] == 'uuid' else secrets.token_hex(24))" "$1"; }
for p in $PROGRAMS; do  # its broker user's credentials, imported by the topology operator (infra/base/broker-users.yaml)
  if ! kubectl -n "$NAMESPACE" get secret "msa-broker-$p" >/dev/null 2>&1; then
    kubectl -n "$NAMESPACE" create secret generic "msa-broker-$p" \
      --from-literal=username="$p" --from-literal=password="$(make_secret hex)"
    kubectl -n "$NAMESPACE" label secret "msa-broker-$p" rabbitmq.com/topology-operator=true
  fi
done
if ! kubectl -n "$NAMESPACE" get secret msa-consul-tokens >/dev/null 2>&1; then  # Consul wants UUIDs
  tokens=()
  for p in $PROGRAMS; do tokens+=("--from-literal=$p=$(make_secret uuid)"); done
  kubectl -n "$NAMESPACE" create secret generic msa-consul-tokens "${tokens[@]}"
fi

echo "== the broker and its users, the databases, Consul's tokens, scraping and dashboards"
render "$here/infra/$OVERLAY" | kubectl apply -f -
kubectl -n "$NAMESPACE" wait rabbitmqcluster/msa-rabbitmq --for=condition=AllReplicasReady --timeout=10m
kubectl -n "$NAMESPACE" wait cluster.postgresql.cnpg.io --all --for=condition=Ready --timeout=10m
kubectl -n "$NAMESPACE" wait user.rabbitmq.com --all --for=condition=Ready --timeout=5m
kubectl -n "$NAMESPACE" wait job/msa-consul-acl --for=condition=Complete --timeout=5m

echo "== the sandbox ($OVERLAY)"
render "$here/overlays/$OVERLAY" | kubectl apply -f -
kubectl -n "$NAMESPACE" rollout status deployment/config-server --timeout=5m
for d in user catalog order gateway probe console; do
  kubectl -n "$NAMESPACE" rollout status "deployment/$d" --timeout=5m
done
echo "ready: kubectl -n $NAMESPACE port-forward svc/gateway 8080  →  http://127.0.0.1:8080/console"
