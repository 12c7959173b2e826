// Package chart tests the healer's Helm chart with the Helm SDK, the way `helm template`
// and `helm lint` see it: render with every ci/*-values.yaml, assert the objects
// (hardened pod, args for every healer flag, least-privilege RBAC), refuse bad values
// through values.schema.json, and keep README.md's values table true to values.yaml.
package chart

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/dnspulse/dnspulse/healer/internal/config"
)

const (
	releaseName      = "dnspulse"
	releaseNamespace = "dnspulse-system"
)

// healerFlags are the flags of the real healer (healer/internal/config), except --version:
// each must be reachable from values.
func healerFlags() []string {
	fs := pflag.NewFlagSet("healer", pflag.ContinueOnError)
	config.Default().AddFlags(fs)
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "version" {
			names = append(names, f.Name)
		}
	})
	return names
}

// allowedRules is the whole of what the healer may do: (apiGroup, resource) -> verbs.
var allowedRules = map[string][]string{
	"/pods":                           {"get", "list", "watch"},
	"/pods/eviction":                  {"create"},
	"/pods/status":                    {"patch"},
	"discovery.k8s.io/endpointslices": {"list", "watch"},
	"/events":                         {"create", "patch"},
	"events.k8s.io/events":            {"create", "patch"},
	"coordination.k8s.io/leases":      {"get", "create", "update", "list", "watch", "delete"},
	"/services":                       {"get", "update"},
}

// rendered is one chart rendering, its objects by kind and name.
type rendered struct {
	objects map[string]map[string][]byte // kind -> name -> YAML
	notes   string
}

func (r *rendered) get(t *testing.T, kind, name string, into any) {
	t.Helper()
	b, ok := r.objects[kind][name]
	if !ok {
		t.Fatalf("no %s %q rendered; have %v", kind, name, r.names(kind))
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s %s: %v\n%s", kind, name, err, b)
	}
}

func (r *rendered) names(kind string) []string {
	var names []string
	for n := range r.objects[kind] {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (r *rendered) deployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	r.get(t, "Deployment", releaseName+"-dnspulse-healer", &d)
	return &d
}

func loadValuesFile(t *testing.T, path string) map[string]any {
	t.Helper()
	vals, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return vals.AsMap()
}

// render runs what `helm template` runs: a client-only dry-run install.
func render(t *testing.T, vals map[string]any) (*rendered, error) {
	t.Helper()
	ch, err := loader.Load(".")
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	install := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	install.ClientOnly = true
	install.DryRun = true
	install.Replace = true
	install.ReleaseName = releaseName
	install.Namespace = releaseNamespace
	install.KubeVersion = kubeVersion(t)
	rel, err := install.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{objects: map[string]map[string][]byte{}, notes: rel.Info.Notes}
	for _, doc := range releaseutil.SplitManifests(rel.Manifest) {
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		if head.Kind == "" {
			continue
		}
		if r.objects[head.Kind] == nil {
			r.objects[head.Kind] = map[string][]byte{}
		}
		if _, dup := r.objects[head.Kind][head.Metadata.Name]; dup {
			t.Fatalf("%s %q rendered twice", head.Kind, head.Metadata.Name)
		}
		r.objects[head.Kind][head.Metadata.Name] = []byte(doc)
	}
	return r, nil
}

// kubeVersion is the cluster version the chart is rendered for: the e2e cluster's (helm's
// own default, without its release ldflags, is v1.20, older than the chart supports).
func kubeVersion(t *testing.T) *chartutil.KubeVersion {
	t.Helper()
	kv, err := chartutil.ParseKubeVersion("v1.37.2")
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func mustRender(t *testing.T, vals map[string]any) *rendered {
	t.Helper()
	r, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return r
}

func ciFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("ci/*-values.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no ci/*-values.yaml: %v", err)
	}
	return files
}

// args splits the healer container's args into flag -> values (in order).
func args(t *testing.T, d *appsv1.Deployment) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		name, value, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !ok {
			t.Errorf("arg %q is not --flag=value", a)
			continue
		}
		out[name] = append(out[name], value)
	}
	return out
}

func TestCIValues(t *testing.T) {
	for _, file := range ciFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			vals := loadValuesFile(t, file)
			r := mustRender(t, vals)
			d := r.deployment(t)
			checkHardenedPod(t, d)
			checkArgs(t, d, vals)
			checkRBAC(t, r, vals)
			checkNames(t, r)
			if !strings.Contains(r.notes, "dnspulse_healer_") || !strings.Contains(r.notes, "audit log") {
				t.Errorf("NOTES.txt does not tell how to watch the verdicts:\n%s", r.notes)
			}
		})
	}
}

func checkHardenedPod(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("pod securityContext is not non-root 65532: %+v", psc)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod seccompProfile is not RuntimeDefault: %+v", psc)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(spec.Containers))
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("container has no securityContext")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is not read-only")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Error("container is not non-root 65532")
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("capabilities are not drop [ALL], add none: %+v", sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("container seccompProfile is not RuntimeDefault")
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("POD_NAME/POD_NAMESPACE not from the downward API: %v", env)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port.String() != "metrics" {
		t.Errorf("liveness probe is not GET /healthz on the metrics port: %+v", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port.String() != "metrics" {
		t.Errorf("readiness probe is not GET /readyz on the metrics port: %+v", c.ReadinessProbe)
	}
	if d.Spec.Replicas != nil && *d.Spec.Replicas > 1 {
		a := spec.Affinity
		if a == nil || a.PodAntiAffinity == nil {
			t.Error("several replicas and no pod anti-affinity")
		}
	}
	if spec.PriorityClassName == "" {
		t.Error("no priorityClassName")
	}
}

// checkArgs asserts that the args are the values, flag by flag.
func checkArgs(t *testing.T, d *appsv1.Deployment, vals map[string]any) {
	t.Helper()
	got := args(t, d)
	known := healerFlags()
	for flag := range got {
		if !slices.Contains(known, flag) {
			t.Errorf("--%s is not a healer flag", flag)
		}
	}
	v := withDefaults(t, vals)
	want := map[string]string{
		"probe-interval":    v.str("probe.interval"),
		"probe-timeout":     v.str("probe.timeout"),
		"probe-min-timeout": v.str("probe.minTimeout"),
		"pulse-min-timeout": v.str("pulse.minTimeout"),
		"retry-backoff":     v.str("remediation.retryBackoff"),
		"retry-backoff-max": v.str("remediation.retryBackoffMax"),
		"max-probe-qps":     v.str("probe.maxQPS"),
		"pulse-interval":    v.str("pulse.interval"),
		"pulse-stream":      v.str("pulse.stream"),
		"pulse-timeout":     v.str("pulse.timeout"),
		"pulse-port":        v.str("coredns.pulsePort"),
		"dry-run":           v.str("remediation.dryRun"),
		"audit-log":         v.str("auditLog"),
		"metrics-addr":      ":" + v.str("metrics.port"),
		"min-available":     v.str("remediation.minAvailable"),
		"max-degraded":      v.str("remediation.maxDegraded"),
		"cooldown":          v.str("remediation.cooldown"),
		"global-cooldown":   v.str("remediation.globalCooldown"),
	}
	static := len(v.list("static.targets")) > 0
	if static {
		if !slices.Equal(got["target"], v.list("static.targets")) {
			t.Errorf("--target %q, want %q", got["target"], v.list("static.targets"))
		}
		for _, kubeOnly := range []string{"namespace", "selector", "canary", "leader-elect", "readiness-gate"} {
			if _, ok := got[kubeOnly]; ok {
				t.Errorf("static mode passes the Kubernetes flag --%s", kubeOnly)
			}
		}
	} else {
		if _, ok := got["target"]; ok {
			t.Error("Kubernetes mode passes --target")
		}
		canaryNS := v.str("canary.namespace")
		if canaryNS == "" {
			canaryNS = releaseNamespace
		}
		leaseNS := v.str("leaderElection.namespace")
		if leaseNS == "" {
			leaseNS = canaryNS
		}
		for k, val := range map[string]string{
			"namespace":      v.str("coredns.namespace"),
			"selector":       v.str("coredns.selector"),
			"service":        v.str("coredns.service"),
			"cluster-domain": v.str("coredns.clusterDomain"),
			"canary":         v.str("canary.enabled"),
			"readiness-gate": v.str("remediation.readinessGate"),
			"allow-delete":   v.str("remediation.allowDelete"),
			"leader-elect":   v.str("leaderElection.enabled"),
		} {
			want[k] = val
		}
		if v.str("canary.enabled") == "true" {
			want["canary-namespace"] = canaryNS
			want["canary-service"] = v.str("canary.serviceName")
			want["canary-interval"] = v.str("canary.interval")
			want["canary-max-lag"] = v.str("canary.maxLag")
		}
		if v.str("leaderElection.enabled") == "true" {
			want["leader-elect-namespace"] = leaseNS
			want["leader-elect-lease"] = v.str("leaderElection.leaseName")
		}
		if kc := v.str("kubeconfig"); kc != "" {
			want["kubeconfig"] = kc
		}
	}
	if pp := v.str("metrics.pprofPort"); pp != "0" {
		want["pprof-addr"] = "127.0.0.1:" + pp
	} else if _, ok := got["pprof-addr"]; ok {
		t.Error("--pprof-addr passed with metrics.pprofPort 0")
	}
	if re := v.str("static.remediateExec"); re != "" {
		want["remediate-exec"] = re
		want["remediate-timeout"] = v.str("static.remediateTimeout")
	}
	if cfg, ok := v.get("config").(map[string]any); ok && len(cfg) > 0 {
		want["config"] = "/etc/dnspulse/config.yaml"
	}
	for flag, w := range want {
		if g := got[flag]; len(g) != 1 || g[0] != w {
			t.Errorf("--%s = %q, want [%q]", flag, g, w)
		}
	}
	if !slices.Equal(got["check"], v.list("checks")) {
		t.Errorf("--check %q, want %q", got["check"], v.list("checks"))
	}
}

// TestArgsCoverEveryFlag: over the ci values, every healer flag is reachable from values.
func TestArgsCoverEveryFlag(t *testing.T) {
	seen := map[string]bool{}
	for _, file := range ciFiles(t) {
		for flag := range args(t, mustRender(t, loadValuesFile(t, file)).deployment(t)) {
			seen[flag] = true
		}
	}
	for _, f := range healerFlags() {
		if !seen[f] {
			t.Errorf("no ci values file sets --%s: add a value (and a ci file) for it", f)
		}
	}
}

func checkRBAC(t *testing.T, r *rendered, vals map[string]any) {
	t.Helper()
	v := withDefaults(t, vals)
	static := len(v.list("static.targets")) > 0
	clusterWide := v.str("rbac.clusterWide") == "true"
	if len(r.objects["ClusterRole"]) > 0 != (clusterWide && !static) {
		t.Errorf("ClusterRoles %v rendered with rbac.clusterWide=%v", r.names("ClusterRole"), clusterWide)
	}
	if len(r.objects["ClusterRoleBinding"]) != len(r.objects["ClusterRole"]) {
		t.Errorf("ClusterRoleBindings %v vs ClusterRoles %v", r.names("ClusterRoleBinding"), r.names("ClusterRole"))
	}
	canary := v.str("canary.serviceName")
	lease := v.str("leaderElection.leaseName")
	granted := map[string]bool{}
	for _, kind := range []string{"Role", "ClusterRole"} {
		for _, name := range r.names(kind) {
			var role rbacv1.Role // same rules shape as ClusterRole
			r.get(t, kind, name, &role)
			if kind == "Role" && role.Namespace == "" {
				t.Errorf("Role %s has no namespace", name)
			}
			for _, rule := range role.Rules {
				if len(rule.NonResourceURLs) > 0 {
					t.Errorf("%s %s grants non-resource URLs %v", kind, name, rule.NonResourceURLs)
				}
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						key := g + "/" + res
						allowed, ok := allowedRules[key]
						if !ok || strings.Contains(key, "*") {
							t.Errorf("%s %s grants %s, which is not in the healer's list", kind, name, key)
							continue
						}
						for _, verb := range rule.Verbs {
							if key == "/pods" && verb == "delete" && v.str("remediation.allowDelete") == "true" {
								granted[key+":"+verb] = true
								continue // asked for by remediation.allowDelete, and only then
							}
							if !slices.Contains(allowed, verb) {
								t.Errorf("%s %s grants %s on %s (allowed: %v)", kind, name, verb, key, allowed)
							}
							granted[key+":"+verb] = true
						}
						switch {
						case key == "/services" && !slices.Equal(rule.ResourceNames, []string{canary}):
							t.Errorf("%s %s: services rule not restricted to the canary %q: resourceNames %v", kind, name, canary, rule.ResourceNames)
						case key == "coordination.k8s.io/leases" && role.Namespace == v.str("coredns.pulseLeaseNamespace"):
							// The replicas' pulse Leases: read, and delete those of pods that are gone.
							if !slices.Equal(rule.Verbs, []string{"get", "list", "watch", "delete"}) {
								t.Errorf("%s %s: pulse leases %v, want get, list, watch, delete", kind, name, rule.Verbs)
							}
						case key == "coordination.k8s.io/leases" && !slices.Equal(rule.Verbs, []string{"create"}) && !slices.Equal(rule.ResourceNames, []string{lease, lease + "-memory"}):
							t.Errorf("%s %s: lease get/update not restricted to %q and its memory: %v", kind, name, lease, rule.ResourceNames)
						}
					}
				}
			}
		}
	}
	// The other direction: what Kubernetes mode needs is there.
	if !static && v.str("rbac.create") == "true" {
		need := []string{"/pods:get", "/pods:list", "/pods:watch", "/pods/eviction:create",
			"discovery.k8s.io/endpointslices:list", "discovery.k8s.io/endpointslices:watch",
			"/events:create", "events.k8s.io/events:create"}
		if v.str("canary.enabled") == "true" {
			need = append(need, "/services:get", "/services:update")
		}
		// The leader Lease, and the guards' memory beside it (also without leader election).
		need = append(need, "coordination.k8s.io/leases:get", "coordination.k8s.io/leases:create", "coordination.k8s.io/leases:update")
		if v.str("coredns.pulseLeaseNamespace") != "" {
			need = append(need, "coordination.k8s.io/leases:list", "coordination.k8s.io/leases:watch", "coordination.k8s.io/leases:delete")
		}
		if v.str("remediation.allowDelete") == "true" {
			need = append(need, "/pods:delete")
		}
		if v.str("remediation.readinessGate") == "true" {
			need = append(need, "/pods/status:patch")
		} else if granted["/pods/status:patch"] {
			t.Error("pods/status patch granted without remediation.readinessGate")
		}
		for _, n := range need {
			if !granted[n] {
				t.Errorf("RBAC lacks %s", n)
			}
		}
		if !clusterWide {
			var coredns rbacv1.Role
			r.get(t, "Role", releaseName+"-dnspulse-healer-coredns", &coredns)
			if coredns.Namespace != v.str("coredns.namespace") {
				t.Errorf("CoreDNS Role in %q, want coredns.namespace %q", coredns.Namespace, v.str("coredns.namespace"))
			}
		}
	}
	if static && len(granted) > 0 {
		t.Errorf("static mode grants %v", granted)
	}
	for _, kind := range []string{"RoleBinding", "ClusterRoleBinding"} {
		for _, name := range r.names(kind) {
			var rb rbacv1.RoleBinding
			r.get(t, kind, name, &rb)
			if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Namespace != releaseNamespace || rb.Subjects[0].Name != releaseName+"-dnspulse-healer" {
				t.Errorf("%s %s binds %+v, want only the healer's ServiceAccount", kind, name, rb.Subjects)
			}
			if _, ok := r.objects[rb.RoleRef.Kind][rb.RoleRef.Name]; !ok {
				t.Errorf("%s %s refers to %s %s, which the chart does not render", kind, name, rb.RoleRef.Kind, rb.RoleRef.Name)
			}
		}
	}
}

func checkNames(t *testing.T, r *rendered) {
	t.Helper()
	for kind, byName := range r.objects {
		for name := range byName {
			if len(name) > 63 {
				t.Errorf("%s name %q longer than 63", kind, name)
			}
		}
	}
}

func TestLongReleaseNameTruncated(t *testing.T) {
	vals := map[string]any{"fullnameOverride": strings.Repeat("x", 63)}
	r := mustRender(t, vals)
	checkNames(t, r)
	for _, kind := range []string{"Role", "Service"} {
		for _, name := range r.names(kind) {
			if strings.HasSuffix(name, "-") {
				t.Errorf("%s %q ends with '-'", kind, name)
			}
		}
	}
}

func TestCanaryServiceAndPDB(t *testing.T) {
	r := mustRender(t, nil)
	var svc corev1.Service
	r.get(t, "Service", "dnspulse-canary", &svc)
	if svc.Spec.Type != corev1.ServiceTypeExternalName || svc.Namespace != releaseNamespace {
		t.Errorf("canary Service: type %s in %q, want ExternalName in %q", svc.Spec.Type, svc.Namespace, releaseNamespace)
	}
	if _, ok := r.objects["PodDisruptionBudget"][releaseName+"-dnspulse-healer"]; !ok {
		t.Error("no PodDisruptionBudget for the healer with 2 replicas")
	}
	if d := r.deployment(t); d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Error("default replicas is not 2")
	}
	// One replica: a PDB would block every drain.
	if r := mustRender(t, map[string]any{"replicaCount": 1}); len(r.objects["PodDisruptionBudget"]) != 0 {
		t.Error("PodDisruptionBudget rendered for a single replica")
	}
}

func TestMonitoringObjects(t *testing.T) {
	r := mustRender(t, loadValuesFile(t, "ci/monitoring-values.yaml"))
	if len(r.objects["ServiceMonitor"]) != 1 {
		t.Errorf("ServiceMonitors: %v", r.names("ServiceMonitor"))
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	b := r.objects["PrometheusRule"][releaseName+"-dnspulse-healer"]
	if err := yaml.Unmarshal(b, &rule); err != nil || len(rule.Spec.Groups) == 0 {
		t.Fatalf("PrometheusRule: %v\n%s", err, b)
	}
	var alerts []string
	for _, r := range rule.Spec.Groups[0].Rules {
		alerts = append(alerts, r.Alert)
		if !strings.Contains(r.Expr, "dnspulse_healer_") {
			t.Errorf("alert %s does not use the healer's metrics: %s", r.Alert, r.Expr)
		}
	}
	for _, want := range []string{"DNSPulseReplicaDegraded", "DNSPulseGlobalDNSFailure", "DNSPulseRemediationFailing", "DNSPulseRemediationBlockedByPDB"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %v", want, alerts)
		}
	}
	var cm corev1.ConfigMap
	r.get(t, "ConfigMap", releaseName+"-dnspulse-healer-dashboard", &cm)
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard", cm.Labels)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["dnspulse.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, metric := range []string{"dnspulse_healer_probe_duration_seconds", "dnspulse_healer_replica_state", "dnspulse_healer_remediations_total", "coredns_pulse_"} {
		if !strings.Contains(all, metric) {
			t.Errorf("dashboard has no panel on %s", metric)
		}
	}
	// Off by default.
	r = mustRender(t, nil)
	for _, kind := range []string{"ServiceMonitor", "PrometheusRule"} {
		if len(r.objects[kind]) != 0 {
			t.Errorf("%s rendered by default", kind)
		}
	}
}

func TestSchemaRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vals  map[string]any
		field string
	}{
		{"replicas wrong type", map[string]any{"replicaCount": "two"}, "replicaCount"},
		{"negative replicas", map[string]any{"replicaCount": -1}, "replicaCount"},
		{"duration as number", map[string]any{"probe": map[string]any{"interval": 20}}, "interval"},
		{"duration not a duration", map[string]any{"probe": map[string]any{"timeout": "fast"}}, "timeout"},
		{"qps negative", map[string]any{"probe": map[string]any{"maxQPS": -1}}, "maxQPS"},
		{"pprof port out of range", map[string]any{"metrics": map[string]any{"pprofPort": 70000}}, "pprofPort"},
		{"port out of range", map[string]any{"coredns": map[string]any{"pulsePort": 70000}}, "pulsePort"},
		{"bool as string", map[string]any{"remediation": map[string]any{"dryRun": "yes"}}, "dryRun"},
		{"negative min-available", map[string]any{"remediation": map[string]any{"minAvailable": -1}}, "minAvailable"},
		{"unknown key (typo)", map[string]any{"replicas": 3}, "replicas"},
		{"nested typo", map[string]any{"remediation": map[string]any{"dryrun": true}}, "dryrun"},
		{"bad anti-affinity", map[string]any{"podAntiAffinity": "maybe"}, "podAntiAffinity"},
		{"bad static target", map[string]any{"static": map[string]any{"targets": []any{"10.0.0.1:53"}}}, "targets"},
		{"checks not a list", map[string]any{"checks": "example.com."}, "checks"},
		{"relative audit log", map[string]any{"auditLog": "audit.log"}, "auditLog"},
		{"canary name not DNS", map[string]any{"canary": map[string]any{"serviceName": "Canary_Svc"}}, "serviceName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.vals)
			if err == nil {
				t.Fatalf("values %v accepted", tc.vals)
			}
			if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error does not name the schema and %q: %v", tc.field, err)
			}
		})
	}
}

func TestLint(t *testing.T) {
	for _, file := range append([]string{""}, ciFiles(t)...) {
		t.Run(filepath.Base(file)+"lint", func(t *testing.T) {
			var vals map[string]any
			if file != "" {
				vals = loadValuesFile(t, file)
			}
			lint := action.NewLint()
			lint.Namespace = releaseNamespace
			lint.KubeVersion = kubeVersion(t)
			res := lint.Run([]string{"."}, vals)
			if res.TotalChartsLinted != 1 {
				t.Fatalf("linted %d charts: %v", res.TotalChartsLinted, res.Errors)
			}
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("helm lint: %s", m)
				}
			}
			for _, err := range res.Errors {
				t.Errorf("helm lint: %v", err)
			}
		})
	}
}

// values are the chart's defaults coalesced with a ci file, read by dotted path.
type values struct{ m map[string]any }

func withDefaults(t *testing.T, vals map[string]any) values {
	t.Helper()
	ch, err := loader.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	merged, err := chartutil.CoalesceValues(ch, vals)
	if err != nil {
		t.Fatal(err)
	}
	return values{merged.AsMap()}
}

func (v values) get(path string) any {
	var cur any = v.m
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func (v values) str(path string) string {
	switch x := v.get(path).(type) {
	case nil:
		return ""
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	default:
		return fmt.Sprint(x)
	}
}

func (v values) list(path string) []string {
	var out []string
	if l, ok := v.get(path).([]any); ok {
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}
