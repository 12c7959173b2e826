//go:build integration

// Package examples starts the real custom CoreDNS ($COREDNS_BIN) on every *.Corefile in
// this directory, as in a pod, and checks that it answers and serves /pulse.
//
// Each example runs in its own mount namespace with what a pod has: a ServiceAccount
// token, CA and namespace at the in-cluster path, KUBERNETES_SERVICE_HOST/PORT pointing to
// a small fake apiserver in this test (TLS; Services, EndpointSlices, Namespaces, Pods and
// Leases), and an /etc/resolv.conf naming a fake upstream resolver in this test. So the
// kubernetes plugin, forward and the pulse Lease run unmodified, with in-cluster config.
// The Corefile is rewritten only where it names addresses and ports: every server block
// binds one 127.0.0.0/8 address of its own, the listeners (health, ready, prometheus,
// pulse) move to that address, and the example's cluster IPs map to the test's servers.
package examples

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/dnspulse/dnspulse/heartbeat"
)

const (
	envLaunch  = "DNSPULSE_PODLAUNCH" // re-executed as the pod launcher with the pod dir
	saDir      = "/var/run/secrets/kubernetes.io/serviceaccount"
	podName    = "coredns-example-7d9c5b-x2x4q"
	podNS      = "kube-system"
	upstreamIP = "192.0.2.1"  // what the fake upstream answers for every A question
	apiSvcIP   = "10.96.0.1"  // the kubernetes Service in the fake apiserver
	clusterDNS = "10.96.0.10" // kube-dns ClusterIP in the examples
	dnsUpIP    = "10.96.0.11" // kube-dns-upstream ClusterIP (nodelocal example)
	nodeLocal  = "169.254.20.10"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envLaunch); dir != "" {
		err := launchPod(dir, os.Args[1:])
		fmt.Fprintln(os.Stderr, "pod launcher:", err)
		os.Exit(111)
	}
	os.Exit(m.Run())
}

// launchPod runs in a fresh mount namespace (the parent set CLONE_NEWNS; Go made / private):
// it mounts what a kubelet mounts into a pod and execs CoreDNS.
func launchPod(dir string, argv []string) error {
	// A tmpfs over /run (/var/run links to it) in this namespace only: the host's /run
	// is neither seen nor touched.
	if err := syscall.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs on /run: %w", err)
	}
	if err := os.MkdirAll(saDir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount(filepath.Join(dir, "serviceaccount"), saDir, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s: %w", saDir, err)
	}
	if err := syscall.Mount(filepath.Join(dir, "resolv.conf"), "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind /etc/resolv.conf: %w", err)
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envLaunch+"=") {
			env = append(env, kv)
		}
	}
	if err := syscall.Exec(argv[0], argv, env); err != nil {
		return fmt.Errorf("exec %s: %w", argv[0], err)
	}
	return nil
}

// query is one question an example must answer, and the A record it must return.
type query struct {
	name string
	want string
}

func TestExamples(t *testing.T) {
	bin := os.Getenv("COREDNS_BIN")
	if bin == "" {
		t.Fatal("COREDNS_BIN not set (make test-integration sets it to _output/bin/coredns)")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: each example runs in its own mount namespace and binds port 53")
	}
	// What each example must answer. A Corefile added to this directory without an entry
	// here fails the test: every example is started.
	examples := map[string]struct {
		queries []query
		lease   string // the namespace of the Lease it must write; "": none
		gate    bool   // it opens its pod's readiness gate
	}{
		"kubeadm.Corefile": {gate: true, queries: []query{
			{"kubernetes.default.svc.cluster.local.", apiSvcIP}, // kubernetes plugin, from the apiserver
			{"www.example.org.", upstreamIP},                    // forward to /etc/resolv.conf
		}},
		"lease.Corefile": {lease: "dnspulse-heartbeat", gate: true, queries: []query{
			{"kubernetes.default.svc.cluster.local.", apiSvcIP},
			{"www.example.org.", upstreamIP},
		}},
		"nodelocal.Corefile": {queries: []query{
			{"kubernetes.default.svc.cluster.local.", upstreamIP}, // forwarded over TCP to kube-dns-upstream
			{"www.example.org.", upstreamIP},
		}},
		"demo.Corefile": {queries: []query{
			{"web.demo.dnspulse.test.", "192.0.2.10"}, // the demo's hosts zone
			{"kubernetes.default.svc.cluster.local.", apiSvcIP},
			{"www.example.org.", upstreamIP},
		}},
	}
	files, err := filepath.Glob("*.Corefile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no *.Corefile here: %v", err)
	}
	for i, file := range files {
		ex, ok := examples[file]
		if !ok {
			t.Errorf("%s has no expectations in TestExamples: add them", file)
			continue
		}
		t.Run(file, func(t *testing.T) {
			runExample(t, bin, file, i, ex.queries, ex.lease, ex.gate)
		})
	}
}

func runExample(t *testing.T, bin, file string, i int, queries []query, leaseNS string, wantGate bool) {
	addr := freeAddr(t, i, 1)
	upstream := freeAddr(t, i, 2)
	startUpstream(t, upstream)
	api := startFakeAPIServer(t)

	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := rewrite(string(src), addr, map[string]string{nodeLocal: addr, clusterDNS: addr, dnsUpIP: upstream})
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	dir := podDir(t, api, upstream)
	confPath := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	out := startCoreDNS(t, bin, dir, confPath, api)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	waitFor(t, 30*time.Second, out, func() error {
		_, err := exchange(c, addr, queries[0].name)
		return err
	})
	for _, q := range queries {
		r, err := exchange(c, addr, q.name)
		if err != nil {
			t.Errorf("%s A: %v", q.name, err)
			continue
		}
		if got := aRecords(r); len(got) != 1 || got[0] != q.want {
			t.Errorf("%s A = %v (%s), want %s", q.name, got, dns.RcodeToString[r.Rcode], q.want)
		}
	}

	// /pulse: a valid heartbeat, named after the pod, ticking, counting our queries.
	pulseURL := "http://" + net.JoinHostPort(addr, "9155")
	var first *heartbeat.Heartbeat
	waitFor(t, 10*time.Second, out, func() error {
		hb, err := getPulse(pulseURL)
		first = hb
		return err
	})
	if first.Version != heartbeat.Version || first.Replica != podName {
		t.Errorf("heartbeat version %d replica %q, want %d %q", first.Version, first.Replica, heartbeat.Version, podName)
	}
	waitFor(t, 10*time.Second, out, func() error {
		hb, err := getPulse(pulseURL)
		if err != nil {
			return err
		}
		if hb.Seq <= first.Seq {
			return fmt.Errorf("seq %d did not grow past %d", hb.Seq, first.Seq)
		}
		if q := hb.Windows[heartbeat.Window10s].Queries; q < uint64(len(queries)) {
			return fmt.Errorf("10s window counts %d queries, we sent %d", q, len(queries)+1)
		}
		// The self-probe goes through the server's own (rewritten) listener: a healthy
		// example must say so.
		if !hb.SelfProbe.OK || hb.Verdict != heartbeat.VerdictHealthy {
			return fmt.Errorf("self-probe ok=%v (%s %q), verdict %s %v", hb.SelfProbe.OK, hb.SelfProbe.Rcode, hb.SelfProbe.Error, hb.Verdict, hb.Reasons)
		}
		return nil
	})
	resp, err := http.Get(pulseURL + "/healthz")
	if err != nil {
		t.Errorf("/healthz on the pulse listener: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "OK" {
			t.Errorf("/healthz = %d %q", resp.StatusCode, body)
		}
	}

	if wantGate {
		// readiness_gate: the pod declares dnspulse.io/serving and has no such condition yet.
		waitFor(t, 20*time.Second, out, func() error {
			p := api.gatePatch()
			if p == "" {
				return errors.New("no patch of pods/status for " + podNS + "/" + podName)
			}
			if !strings.Contains(p, `"type":"dnspulse.io/serving"`) || !strings.Contains(p, `"status":"True"`) || strings.Count(p, `"type"`) != 1 {
				return fmt.Errorf("pods/status patch %s: want only dnspulse.io/serving=True", p)
			}
			return nil
		})
	}
	if leaseNS != "" {
		waitFor(t, 20*time.Second, out, func() error {
			l := api.lease(leaseNS, podName)
			if l == nil {
				return errors.New("no Lease " + leaseNS + "/" + podName + " written")
			}
			v := l.Annotations["dnspulse.io/verdict"]
			if v != heartbeat.VerdictHealthy && v != heartbeat.VerdictDegraded {
				return fmt.Errorf("lease verdict annotation %q", v)
			}
			if _, err := strconv.ParseUint(l.Annotations["dnspulse.io/seq"], 10, 64); err != nil {
				return fmt.Errorf("lease seq annotation: %v", err)
			}
			if !json.Valid([]byte(l.Annotations["dnspulse.io/summary"])) {
				return fmt.Errorf("lease summary annotation is not JSON: %q", l.Annotations["dnspulse.io/summary"])
			}
			return nil
		})
	}
	if unknown := api.unknownRequests(); len(unknown) > 0 {
		t.Logf("requests the fake apiserver did not serve (404): %v", unknown)
	}
}

// rewrite moves an example to the test's addresses, and changes nothing else:
//   - every server block gets `bind ADDR` (an existing bind line is replaced);
//   - health, ready, prometheus and pulse listen on ADDR, on the port they had (or their
//     default port when none was written);
//   - IP literals in ipMap (the examples' cluster and link-local IPs) are replaced.
func rewrite(src, addr string, ipMap map[string]string) (string, error) {
	for from, to := range ipMap {
		src = regexp.MustCompile(`\b`+regexp.QuoteMeta(from)+`\b`).ReplaceAllString(src, to)
	}
	defaultPort := map[string]string{"health": "8080", "ready": "8181", "prometheus": "9153", "pulse": "9155"}
	listener := regexp.MustCompile(`^(\s+)(health|ready|prometheus|pulse)(?:\s+(\S*:\d+))?(\s*\{)?\s*$`)
	header := regexp.MustCompile(`^\S+:53\s*\{\s*$`)
	var out []string
	blocks := 0
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case header.MatchString(line):
			blocks++
			out = append(out, line, "    bind "+addr)
			continue
		case strings.HasPrefix(trimmed, "bind "):
			continue // replaced by the bind added after the header
		}
		if m := listener.FindStringSubmatch(line); m != nil {
			port := defaultPort[m[2]]
			if m[3] != "" {
				_, p, err := net.SplitHostPort(m[3])
				if err != nil {
					return "", fmt.Errorf("%s address %q: %v", m[2], m[3], err)
				}
				port = p
			}
			line = m[1] + m[2] + " " + net.JoinHostPort(addr, port) + m[4]
		}
		out = append(out, line)
	}
	if blocks == 0 {
		return "", errors.New("no server block on port 53")
	}
	return strings.Join(out, "\n"), nil
}

func TestRewrite(t *testing.T) {
	in := "# c\n.:53 {\n    health {\n       lameduck 5s\n    }\n    ready\n    pulse :9155 {\n       tick 50ms\n    }\n    bind 169.254.20.10 10.96.0.10\n    prometheus 169.254.20.10:9253\n    forward . 10.96.0.11 {\n    }\n}\n"
	got, err := rewrite(in, "127.0.9.1", map[string]string{"169.254.20.10": "127.0.9.1", "10.96.0.10": "127.0.9.1", "10.96.0.11": "127.0.9.2"})
	if err != nil {
		t.Fatal(err)
	}
	want := "# c\n.:53 {\n    bind 127.0.9.1\n    health 127.0.9.1:8080 {\n       lameduck 5s\n    }\n    ready 127.0.9.1:8181\n    pulse 127.0.9.1:9155 {\n       tick 50ms\n    }\n    prometheus 127.0.9.1:9253\n    forward . 127.0.9.2 {\n    }\n}\n"
	if got != want {
		t.Errorf("rewrite:\n%s\nwant:\n%s", got, want)
	}
}

// freeAddr picks a 127.0.0.0/8 address for example i whose port 53 is free.
func freeAddr(t *testing.T, i, role int) string {
	t.Helper()
	for k := 0; k < 20; k++ {
		a := fmt.Sprintf("127.%d.%d.%d", 120+k, 10+i, role)
		u, err := net.ListenPacket("udp", net.JoinHostPort(a, "53"))
		if err != nil {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(a, "53"))
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		return a
	}
	t.Fatal("no free loopback address for port 53")
	return ""
}

// startUpstream serves every A question with upstreamIP, over UDP and TCP (force_tcp).
func startUpstream(t *testing.T, addr string) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 30 IN A " + upstreamIP)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	for _, network := range []string{"udp", "tcp"} {
		started := make(chan error, 1)
		srv := &dns.Server{Addr: net.JoinHostPort(addr, "53"), Net: network, Handler: h,
			NotifyStartedFunc: func() { started <- nil }}
		go func() {
			if err := srv.ListenAndServe(); err != nil {
				started <- err
			}
		}()
		if err := <-started; err != nil {
			t.Fatalf("upstream %s %s: %v", network, addr, err)
		}
		t.Cleanup(func() { srv.Shutdown() })
	}
}

func podDir(t *testing.T, api *fakeAPIServer, upstream string) string {
	t.Helper()
	dir := t.TempDir()
	sa := filepath.Join(dir, "serviceaccount")
	if err := os.MkdirAll(sa, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		filepath.Join(sa, "token"):        "fake-token-for-the-test-apiserver",
		filepath.Join(sa, "namespace"):    podNS,
		filepath.Join(sa, "ca.crt"):       string(api.caPEM),
		filepath.Join(dir, "resolv.conf"): "nameserver " + upstream + "\n",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// output collects a process's stdout and stderr for failure messages.
type output struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	exited chan struct{}
	err    error
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

func startCoreDNS(t *testing.T, bin, dir, conf string, api *fakeAPIServer) *output {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(api.addr)
	out := &output{exited: make(chan struct{})}
	cmd := exec.Command(self, bin, "-conf", conf)
	cmd.Dir = dir
	cmd.Env = []string{
		envLaunch + "=" + dir,
		"POD_NAME=" + podName,
		"POD_NAMESPACE=" + podNS,
		"KUBERNETES_SERVICE_HOST=" + host,
		"KUBERNETES_SERVICE_PORT=" + port,
		"HOSTNAME=" + podName,
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		out.err = cmd.Wait()
		close(out.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-out.exited
		if t.Failed() {
			t.Logf("coredns output:\n%s", out.String())
		}
	})
	return out
}

// waitFor polls cond until it returns nil, the process exits, or the deadline passes.
func waitFor(t *testing.T, d time.Duration, out *output, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		select {
		case <-out.exited:
			t.Fatalf("coredns exited: %v\n%s", out.err, out.String())
		default:
		}
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not within %v: %v", d, err)
}

func exchange(c *dns.Client, addr, name string) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := c.Exchange(m, net.JoinHostPort(addr, "53"))
	return r, err
}

func aRecords(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

func getPulse(url string) (*heartbeat.Heartbeat, error) {
	resp, err := http.Get(url + heartbeat.Path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: %s %q", heartbeat.Path, resp.Status, b)
	}
	return heartbeat.Decode(resp.Body)
}

// fakeAPIServer is the least of an apiserver that lets the kubernetes plugin sync and the
// pulse plugin keep its Lease: lists, watches that stay open, and Lease get/create/update.
type fakeAPIServer struct {
	addr  string
	caPEM []byte

	mu      sync.Mutex
	leases  map[string]*coordinationv1.Lease
	patch   string // the last pods/status patch of the pod
	rv      int
	unknown []string
	stop    chan struct{}
}

func startFakeAPIServer(t *testing.T) *fakeAPIServer {
	t.Helper()
	f := &fakeAPIServer{leases: map[string]*coordinationv1.Lease{}, rv: 10, stop: make(chan struct{})}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	srv.StartTLS() // listens on 127.0.0.1; its certificate names 127.0.0.1
	t.Cleanup(func() {
		close(f.stop)
		srv.CloseClientConnections()
		srv.Close()
	})
	f.addr = srv.Listener.Addr().String()
	f.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if _, err := x509.ParseCertificate(srv.Certificate().Raw); err != nil {
		t.Fatal(err)
	}
	if ip, err := netip.ParseAddr(strings.Split(f.addr, ":")[0]); err != nil || !ip.IsLoopback() {
		t.Fatalf("fake apiserver not on loopback: %s", f.addr)
	}
	return f
}

func (f *fakeAPIServer) lease(ns, name string) *coordinationv1.Lease {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.leases[ns+"/"+name]; ok {
		return l.DeepCopy()
	}
	return nil
}

func (f *fakeAPIServer) gatePatch() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.patch
}

func (f *fakeAPIServer) unknownRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unknown...)
}

var leasePath = regexp.MustCompile(`^/apis/coordination.k8s.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$`)

func (f *fakeAPIServer) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if m := leasePath.FindStringSubmatch(r.URL.Path); m != nil {
		f.serveLease(w, r, m[1], m[2])
		return
	}
	if r.URL.Path == "/api/v1/namespaces/"+podNS+"/pods/"+podName+"/status" && r.Method == http.MethodPatch {
		// pulse's readiness_gate: the patch is recorded, the pod answered as it was.
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.patch = string(body)
		f.mu.Unlock()
		json.NewEncoder(w).Encode(gatedPod())
		return
	}
	if r.URL.Path == "/api/v1/namespaces/"+podNS+"/pods" && r.Method == http.MethodGet && r.URL.Query().Get("watch") == "" {
		json.NewEncoder(w).Encode(corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
			ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []corev1.Pod{gatedPod()}})
		return
	}
	if r.Method != http.MethodGet {
		f.notFound(w, r)
		return
	}
	var items []any
	var list any
	meta := metav1.ListMeta{ResourceVersion: "1"}
	switch r.URL.Path {
	case "/version":
		json.NewEncoder(w).Encode(map[string]string{"major": "1", "minor": "37", "gitVersion": "v1.37.2"})
		return
	case "/api/v1/services":
		svc := corev1.Service{
			TypeMeta:   metav1.TypeMeta{Kind: "Service", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", ResourceVersion: "1", UID: "svc-kubernetes"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: apiSvcIP, ClusterIPs: []string{apiSvcIP},
				Ports: []corev1.ServicePort{{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}}},
		}
		items = []any{svc}
		list = corev1.ServiceList{TypeMeta: metav1.TypeMeta{Kind: "ServiceList", APIVersion: "v1"}, ListMeta: meta, Items: []corev1.Service{svc}}
	case "/apis/discovery.k8s.io/v1/endpointslices":
		ready := true
		port, name, proto := int32(6443), "https", corev1.ProtocolTCP
		es := discoveryv1.EndpointSlice{
			TypeMeta: metav1.TypeMeta{Kind: "EndpointSlice", APIVersion: "discovery.k8s.io/v1"},
			ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", ResourceVersion: "1", UID: "es-kubernetes",
				Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.100"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
			Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
		}
		items = []any{es}
		list = discoveryv1.EndpointSliceList{TypeMeta: metav1.TypeMeta{Kind: "EndpointSliceList", APIVersion: "discovery.k8s.io/v1"}, ListMeta: meta, Items: []discoveryv1.EndpointSlice{es}}
	case "/api/v1/namespaces":
		var nss []corev1.Namespace
		for _, n := range []string{"default", "kube-system"} {
			ns := corev1.Namespace{TypeMeta: metav1.TypeMeta{Kind: "Namespace", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: n, ResourceVersion: "1", UID: types.UID("ns-" + n)}}
			nss = append(nss, ns)
			items = append(items, ns)
		}
		list = corev1.NamespaceList{TypeMeta: metav1.TypeMeta{Kind: "NamespaceList", APIVersion: "v1"}, ListMeta: meta, Items: nss}
	case "/api/v1/pods":
		list = corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}, ListMeta: meta, Items: []corev1.Pod{}}
	default:
		f.notFound(w, r)
		return
	}
	q := r.URL.Query()
	if q.Get("watch") != "true" && q.Get("watch") != "1" {
		json.NewEncoder(w).Encode(list)
		return
	}
	// A watch: the initial events when asked for them (client-go's WatchList), then
	// nothing until the client or the test goes away.
	enc := json.NewEncoder(w)
	if q.Get("sendInitialEvents") == "true" {
		for _, it := range items {
			enc.Encode(map[string]any{"type": "ADDED", "object": it})
		}
		kind := strings.TrimSuffix(fmt.Sprintf("%T", list), "List")
		kind = kind[strings.LastIndex(kind, ".")+1:]
		apiVersion := "v1"
		if strings.Contains(r.URL.Path, "discovery.k8s.io") {
			apiVersion = "discovery.k8s.io/v1"
		}
		enc.Encode(map[string]any{"type": "BOOKMARK", "object": map[string]any{
			"kind": kind, "apiVersion": apiVersion,
			"metadata": map[string]any{"resourceVersion": "1", "annotations": map[string]string{"k8s.io/initial-events-end": "true"}},
		}})
	}
	if fl, ok := w.(http.Flusher); ok {
		fl.Flush()
	}
	select {
	case <-r.Context().Done():
	case <-f.stop:
	}
}

// gatedPod is the example's own pod: it declares the readiness gate dnspulse.io/serving.
func gatedPod() corev1.Pod {
	return corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: podName, Namespace: podNS, UID: "pod-uid", ResourceVersion: "1"},
		Spec:       corev1.PodSpec{ReadinessGates: []corev1.PodReadinessGate{{ConditionType: "dnspulse.io/serving"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning}}
}

func (f *fakeAPIServer) serveLease(w http.ResponseWriter, r *http.Request, ns, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var in coordinationv1.Lease
	if r.Method == http.MethodPost || r.Method == http.MethodPut {
		// client-go sends built-in types as protobuf or JSON; the universal
		// deserializer reads both.
		body, err := io.ReadAll(r.Body)
		if err == nil {
			_, _, err = scheme.Codecs.UniversalDeserializer().Decode(body, nil, &in)
		}
		if err != nil {
			f.status(w, http.StatusBadRequest, metav1.StatusReasonBadRequest, err.Error())
			return
		}
		if name == "" {
			name = in.Name
		}
	}
	key := ns + "/" + name
	cur, exists := f.leases[key]
	switch {
	case r.Method == http.MethodGet && name != "":
		if !exists {
			f.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, "leases \""+name+"\" not found")
			return
		}
		json.NewEncoder(w).Encode(cur)
	case r.Method == http.MethodPost:
		if exists {
			f.status(w, http.StatusConflict, metav1.StatusReasonAlreadyExists, "leases \""+name+"\" already exists")
			return
		}
		f.store(w, http.StatusCreated, key, &in)
	case r.Method == http.MethodPut && exists:
		if in.ResourceVersion != cur.ResourceVersion {
			f.status(w, http.StatusConflict, metav1.StatusReasonConflict, "the object has been modified")
			return
		}
		f.store(w, http.StatusOK, key, &in)
	default:
		f.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, r.Method+" "+r.URL.Path)
	}
}

func (f *fakeAPIServer) store(w http.ResponseWriter, code int, key string, l *coordinationv1.Lease) {
	f.rv++
	l.ResourceVersion = strconv.Itoa(f.rv)
	l.TypeMeta = metav1.TypeMeta{Kind: "Lease", APIVersion: "coordination.k8s.io/v1"}
	f.leases[key] = l
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(l)
}

func (f *fakeAPIServer) notFound(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.unknown = append(f.unknown, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	f.status(w, http.StatusNotFound, metav1.StatusReasonNotFound, "not served by the test's fake apiserver")
}

func (f *fakeAPIServer) status(w http.ResponseWriter, code int, reason metav1.StatusReason, msg string) {
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: msg,
	})
}
