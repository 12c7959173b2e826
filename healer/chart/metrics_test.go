package chart

import (
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnspulse/dnspulse/healer/internal/metrics"
)

// TestMonitoringUsesRealMetrics keeps the alerts and the dashboard true to the code: every
// dnspulse_healer_* name they use is registered by healer/internal/metrics, every coredns_pulse_*
// name is declared in plugin/pulse/metrics.go. A renamed metric fails here, not in a
// silent dashboard.
func TestMonitoringUsesRealMetrics(t *testing.T) {
	known := map[string]bool{}
	m := metrics.New(func() float64 { return 0 })
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok || v.Type().Field(i).Name == "Registry" {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			if n := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String()); n != nil {
				known[n[1]] = true
			}
		}
	}
	pulseSrc, err := os.ReadFile("../../plugin/pulse/metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range regexp.MustCompile(`Subsystem: "pulse", Name: "(\w+)"`).FindAllSubmatch(pulseSrc, -1) {
		known["coredns_pulse_"+string(n[1])] = true
	}
	if len(known) < 10 {
		t.Fatalf("found only %d metric names; the discovery is broken: %v", len(known), known)
	}

	r := mustRender(t, loadValuesFile(t, "ci/monitoring-values.yaml"))
	var used []byte
	used = append(used, r.objects["PrometheusRule"][releaseName+"-dnspulse-healer"]...)
	used = append(used, r.objects["ConfigMap"][releaseName+"-dnspulse-healer-dashboard"]...)
	names := map[string]bool{}
	for _, n := range regexp.MustCompile(`\b(?:dnspulse_healer|coredns_pulse)_\w+`).FindAll(used, -1) {
		name := string(n)
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base := strings.TrimSuffix(name, suffix); base != name && known[base] {
				name = base
			}
		}
		names[name] = true
	}
	if len(names) == 0 {
		t.Fatal("no metric names found in the PrometheusRule and dashboard")
	}
	var unknown []string
	for n := range names {
		if !known[n] {
			unknown = append(unknown, n)
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		t.Errorf("the chart's monitoring uses metrics nobody exports: %v", unknown)
	}
}
