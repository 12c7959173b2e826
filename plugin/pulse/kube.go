package pulse

import (
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// The Kubernetes parts of pulse (the Lease heartbeat, the readiness gate) run beside the
// DNS path with the pod's own ServiceAccount, and never touch DNS: a failure is logged and
// counted, and tried again later.

const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// apiCallTimeout bounds every call pulse makes to the apiserver.
const apiCallTimeout = 5 * time.Second

// inClusterClient is a clientset from the pod's in-cluster config, with apiCallTimeout.
func inClusterClient() (kubernetes.Interface, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	cfg.Timeout = apiCallTimeout
	cfg.UserAgent = "coredns-pulse"
	return kubernetes.NewForConfig(cfg)
}

// ownNamespace is the pod's namespace, from its ServiceAccount's files.
func ownNamespace() (string, error) {
	b, err := os.ReadFile(serviceAccountNamespaceFile)
	if err != nil {
		return "", fmt.Errorf("the pod's namespace: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
