// Package cluster runs a real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler built from the official modules by `make cluster-bins`)
// and an in-process node agent that runs our own binaries as pods, each in its own network and mount
// namespace on a bridge in 198.18.0.0/15. It is what the end-to-end tests and `make cluster` run on.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Options configures Start. The zero value works from anywhere inside the repository.
type Options struct {
	// BinDir holds etcd, kube-*, kubectl, helm, coredns, healer. Default: $DNSPULSE_BIN_DIR, else
	// _output/bin of the repository that contains the working directory.
	BinDir string
	// StateDir receives certificates, etcd data, kubeconfig, pod folders. Default: a new temp dir,
	// removed by Stop unless KeepState.
	StateDir  string
	KeepState bool
	// LogDir receives one log per component and per pod container. Default: StateDir/logs
	// (kept when KeepState or when DNSPULSE_E2E_LOGS names a folder to copy them to).
	LogDir string
	// Images maps a substring of a container image to the binary that plays it. Default:
	// "coredns" -> BinDir/coredns, "healer" -> BinDir/healer, "e2e-shell" -> /bin/sh (test pods
	// that only need a process: `command: [sh, -c, ...]`).
	Images map[string]string
	// NodeName of the single node. Default "dnsp-node".
	NodeName string
	// SkipDNS leaves the cluster without the kube-dns add-on (manifests/coredns.yaml).
	SkipDNS bool
	// UpstreamRecords are the A records the harness's upstream DNS server (on the bridge, what the
	// pods' /etc/resolv.conf names) answers; everything else gets NXDOMAIN.
	UpstreamRecords map[string]string
	// Logf receives progress lines. Default: discard.
	Logf func(format string, args ...any)
}

// Cluster is a running local cluster.
type Cluster struct {
	// Config is an admin (system:masters) client config.
	Config *rest.Config
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig file (for kubectl and helm).
	Kubeconfig string
	// APIServer is host:port of the apiserver, on the bridge address so pods reach it too.
	APIServer string
	// Gateway is the bridge's address: apiserver and upstream DNS listen there.
	Gateway net.IP
	// PodCIDR is the /24 pod addresses come from.
	PodCIDR string
	// ServiceCIDR and DNSServiceIP of the cluster.
	ServiceCIDR, DNSServiceIP string
	StateDir, LogDir, BinDir  string
	Upstream                  *Upstream
	Node                      *Node

	opts    Options
	net     *network
	pki     *pki
	procs   []*process
	mu      sync.Mutex
	stopped bool
}

const (
	serviceCIDR  = "10.96.0.0/16"
	dnsServiceIP = "10.96.0.10"
)

func (o *Options) defaults() error {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.BinDir == "" {
		o.BinDir = os.Getenv("DNSPULSE_BIN_DIR")
	}
	if o.BinDir == "" {
		root, err := repoRoot()
		if err != nil {
			return err
		}
		o.BinDir = filepath.Join(root, "_output", "bin")
	}
	abs, err := filepath.Abs(o.BinDir)
	if err != nil {
		return err
	}
	o.BinDir = abs
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(o.BinDir, b)); err != nil {
			return fmt.Errorf("control-plane binary %s missing in %s (run `make cluster-bins`): %w", b, o.BinDir, err)
		}
	}
	if o.Images == nil {
		o.Images = map[string]string{"coredns": filepath.Join(o.BinDir, "coredns"), "healer": filepath.Join(o.BinDir, "healer"), "e2e-shell": "/bin/sh"}
	}
	if o.NodeName == "" {
		o.NodeName = "dnsp-node"
	}
	return nil
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "e2e")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the repository root (a go.mod next to e2e/) above the working directory; set Options.BinDir or DNSPULSE_BIN_DIR")
		}
		dir = parent
	}
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start brings up the control plane, the node agent and (unless SkipDNS) the cluster DNS, and
// returns once all CoreDNS pods are Ready. On error everything already started is torn down.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	c = &Cluster{opts: opts, BinDir: opts.BinDir, ServiceCIDR: serviceCIDR, DNSServiceIP: dnsServiceIP}
	defer func() {
		if err != nil {
			c.Stop(context.Background())
			c = nil
		}
	}()
	if opts.StateDir == "" {
		if c.StateDir, err = os.MkdirTemp("", "dnspulse-cluster-"); err != nil {
			return c, err
		}
	} else {
		c.StateDir = opts.StateDir
		if err = os.MkdirAll(c.StateDir, 0o755); err != nil {
			return c, err
		}
	}
	c.LogDir = opts.LogDir
	if c.LogDir == "" {
		c.LogDir = filepath.Join(c.StateDir, "logs")
	}
	if err = os.MkdirAll(c.LogDir, 0o755); err != nil {
		return c, err
	}
	began := time.Now()
	logf := opts.Logf

	if c.net, err = newNetwork(ctx); err != nil {
		return c, fmt.Errorf("pod network: %w", err)
	}
	c.Gateway, c.PodCIDR = c.net.gateway, c.net.cidr()
	logf("pod network %s on bridge %s", c.PodCIDR, c.net.bridge)

	if c.Upstream, err = startUpstream(c.Gateway.String(), opts.UpstreamRecords, logf); err != nil {
		return c, fmt.Errorf("upstream DNS: %w", err)
	}

	if c.pki, err = generatePKI(filepath.Join(c.StateDir, "pki"), []net.IP{net.IPv4(127, 0, 0, 1), c.Gateway, net.IPv4(10, 96, 0, 1)}); err != nil {
		return c, fmt.Errorf("certificates: %w", err)
	}
	if err = c.startControlPlane(ctx); err != nil {
		return c, err
	}
	logf("control plane ready at https://%s after %s", c.APIServer, time.Since(began).Round(time.Millisecond))

	c.Node = newNode(c)
	if err = c.Node.start(ctx); err != nil {
		return c, fmt.Errorf("node agent: %w", err)
	}
	if err = c.waitServiceAccount(ctx, "kube-system", "default"); err != nil {
		return c, err
	}
	if !opts.SkipDNS {
		// pulse opens its own pod's readiness gate: its RBAC and admission policy first.
		if err = c.ApplyManifest(ctx, "gate-rbac.yaml"); err != nil {
			return c, fmt.Errorf("cluster DNS: gate-rbac.yaml: %w", err)
		}
		if err = c.ApplyManifest(ctx, "coredns.yaml"); err != nil {
			return c, fmt.Errorf("cluster DNS: %w", err)
		}
		if err = c.WaitDeploymentReady(ctx, "kube-system", "coredns"); err != nil {
			return c, fmt.Errorf("cluster DNS: %w", err)
		}
		logf("cluster DNS ready after %s", time.Since(began).Round(time.Millisecond))
	}
	return c, nil
}

func (c *Cluster) env() []string {
	return append(os.Environ(), markerEnv+"="+c.StateDir)
}

func (c *Cluster) bin(name string) string { return filepath.Join(c.BinDir, name) }

func (c *Cluster) startControlPlane(ctx context.Context) error {
	logf := c.opts.Logf
	etcdClient, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	etcdPeer, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := c.spawn("etcd", c.bin("etcd"), "--name=default", "--data-dir="+filepath.Join(c.StateDir, "etcd"),
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "etcd", clientURL+"/health", nil); err != nil {
		return err
	}
	logf("etcd ready on %s", clientURL)

	apiPort, err := freePort(c.Gateway.String())
	if err != nil {
		return err
	}
	c.APIServer = net.JoinHostPort(c.Gateway.String(), strconv.Itoa(apiPort))
	p := c.pki
	if err := c.spawn("kube-apiserver", c.bin("kube-apiserver"),
		"--etcd-servers="+clientURL,
		// On the bridge address: pods reach it there (no kube-proxy), and the kubernetes Service's
		// endpoints the lease reconciler writes point at an address pods can use.
		"--bind-address="+c.Gateway.String(), "--advertise-address="+c.Gateway.String(),
		"--secure-port="+strconv.Itoa(apiPort),
		"--service-cluster-ip-range="+serviceCIDR,
		"--tls-cert-file="+p.ServingCert, "--tls-private-key-file="+p.ServingKey,
		"--client-ca-file="+p.CACert,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.SAPub, "--service-account-signing-key-file="+p.SAKey,
		"--allow-privileged=true",
		"--profiling=false",
		"--cert-dir="+filepath.Join(c.StateDir, "apiserver-certs"),
	); err != nil {
		return err
	}
	if err := c.writeKubeconfig(); err != nil {
		return err
	}
	tlsCfg, err := rest.TLSConfigFor(c.Config)
	if err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-apiserver", "https://"+c.APIServer+"/readyz", tlsCfg); err != nil {
		return err
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return err
	}
	logf("kube-apiserver ready on %s", c.APIServer)

	kcmPort, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	if err := c.spawn("kube-controller-manager", c.bin("kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig, "--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		// A real CA: it becomes ca.crt of every kube-root-ca.crt ConfigMap, which pods trust.
		"--root-ca-file="+p.CACert,
		"--service-account-private-key-file="+p.SAKey,
		"--cluster-signing-cert-file="+p.CACert, "--cluster-signing-key-file="+p.CAKey,
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort),
		"--cert-dir="+filepath.Join(c.StateDir, "kcm-certs"),
	); err != nil {
		return err
	}
	schedPort, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	if err := c.spawn("kube-scheduler", c.bin("kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig, "--authentication-kubeconfig="+c.Kubeconfig, "--authorization-kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort),
		"--cert-dir="+filepath.Join(c.StateDir, "scheduler-certs"),
	); err != nil {
		return err
	}
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // self-signed serving certs of local components, healthz only
	if err := c.waitHTTP(ctx, "kube-controller-manager", fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), insecure); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "kube-scheduler", fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort), insecure); err != nil {
		return err
	}
	return nil
}

func (c *Cluster) spawn(name string, argv ...string) error {
	p, err := startProcess(name, filepath.Join(c.LogDir, name+".log"), c.StateDir, c.env(), argv...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return nil
}

func (c *Cluster) proc(name string) *process {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// waitHTTP polls url until it answers 200, the component exits (its log tail is in the error), or
// the deadline passes.
func (c *Cluster) waitHTTP(ctx context.Context, name, url string, tlsCfg *tls.Config) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	for {
		if p := c.proc(name); p != nil && p.exited() {
			return fmt.Errorf("%s exited (%w); see %s:\n%s", name, p.err, filepath.Join(c.LogDir, name+".log"), tail(filepath.Join(c.LogDir, name+".log"), 20))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %s (log %s)", name, url, last, filepath.Join(c.LogDir, name+".log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	n := 0
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n++
			if n > lines {
				return string(b[i+1:])
			}
		}
	}
	return string(b)
}

func (c *Cluster) writeKubeconfig() error {
	p := c.pki
	c.Config = &rest.Config{
		Host: "https://" + c.APIServer,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: p.caPEM, CertData: p.adminCertPEM, KeyData: p.adminKeyPEM,
		},
		QPS: 100, Burst: 200,
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["dnspulse"] = &clientcmdapi.Cluster{Server: c.Config.Host, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.adminCertPEM, ClientKeyData: p.adminKeyPEM}
	cfg.Contexts["dnspulse"] = &clientcmdapi.Context{Cluster: "dnspulse", AuthInfo: "admin", Namespace: "kube-system"}
	cfg.CurrentContext = "dnspulse"
	c.Kubeconfig = filepath.Join(c.StateDir, "kubeconfig")
	return clientcmd.WriteToFile(*cfg, c.Kubeconfig)
}

// waitServiceAccount waits for the ServiceAccount controller: a namespace has no `default`
// ServiceAccount for a moment after it is created, and pods are refused until it exists.
func (c *Cluster) waitServiceAccount(ctx context.Context, ns, name string) error {
	return poll(ctx, time.Minute, fmt.Sprintf("ServiceAccount %s/%s", ns, name), func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// CreateNamespace creates a namespace and waits until its default ServiceAccount exists.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return c.waitServiceAccount(ctx, name, "default")
}

// poll calls cond every 100ms until it is true, returns an error, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %w)", what, ctx.Err(), lastErr)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop tears everything down: pods (SIGTERM, then SIGKILL), their namespaces, veths and mounts,
// the control plane, the bridge, the upstream DNS, and the state folder unless KeepState.
// Idempotent; safe on a half-started cluster.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	c.mu.Unlock()
	var errs []error
	if c.Node != nil {
		errs = append(errs, c.Node.stop(ctx))
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(ctx, 5*time.Second)
	}
	if c.Upstream != nil {
		c.Upstream.stop()
	}
	if c.net != nil {
		errs = append(errs, c.net.destroy(ctx))
	}
	if dst := os.Getenv("DNSPULSE_E2E_LOGS"); dst != "" && c.LogDir != "" {
		errs = append(errs, copyDir(c.LogDir, dst))
	}
	if c.StateDir != "" && !c.opts.KeepState && c.opts.StateDir == "" {
		errs = append(errs, os.RemoveAll(c.StateDir))
	}
	return errors.Join(errs...)
}

func copyDir(src, dst string) error {
	return filepath.Walk(src, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}
