//go:build e2e

package heal

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// TestBenchHealing is `make bench-e2e` (hack/bench-e2e.sh): every fault class injected
// DNSPULSE_BENCH_ROUNDS times, with the median and worst time from the fault to the verdict, to
// the pod leaving the kube-dns EndpointSlice's ready endpoints, and to a replacement answering.
// The Markdown table goes to DNSPULSE_BENCH_OUT. Skipped unless DNSPULSE_BENCH_ROUNDS is set.
func TestBenchHealing(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("DNSPULSE_BENCH_ROUNDS"))
	if rounds <= 0 {
		t.Skip("DNSPULSE_BENCH_ROUNDS not set (make bench-e2e)")
	}
	only := os.Getenv("DNSPULSE_BENCH_FAULTS") // comma-separated subset, default all
	type series struct {
		verdict, drained, serving []time.Duration
		aftercare                 int
		// The stale class only: from the moment the staleness exists (the first canary
		// rotation after the cut, plus the max lag) to the verdict and to the drain.
		staleVerdict, staleDrained []time.Duration
	}
	results := map[string]*series{}
	var order []string
	// Written even when a round fails (t.Fatal runs deferred calls): partial figures are marked.
	defer func() {
		var b strings.Builder
		fmt.Fprintf(&b, "| fault | rounds | verdict median | verdict worst | drained median | drained worst | replacement serving median | replacement serving worst | replacement then evicted or left degraded |\n")
		fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
		for _, name := range order {
			s := results[name]
			fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %d |\n", name, len(s.verdict),
				ms(median(s.verdict)), ms(worst(s.verdict)), ms(median(s.drained)), ms(worst(s.drained)),
				ms(median(s.serving)), ms(worst(s.serving)), s.aftercare)
		}
		for _, name := range order {
			if s := results[name]; len(s.staleDrained) > 0 {
				fmt.Fprintf(&b, "\n%s, timed from the moment the staleness exists (the first canary rotation after the cut, as a watch of the canary Service saw it, plus the max lag, %s): verdict median %s, worst %s; drained median %s, worst %s (%d rounds).\n",
					name, CanaryMaxLag, ms(median(s.staleVerdict)), ms(worst(s.staleVerdict)),
					ms(median(s.staleDrained)), ms(worst(s.staleDrained)), len(s.staleDrained))
			}
		}
		t.Logf("\n%s", b.String())
		if out := os.Getenv("DNSPULSE_BENCH_OUT"); out != "" {
			if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}()
	for _, f := range Faults() {
		if only != "" && !strings.Contains(","+only+",", ","+f.Name+",") {
			continue
		}
		s := &series{}
		results[f.Name] = s
		order = append(order, f.Name)
		for i := 1; i <= rounds; i++ {
			ctx, pods := begin(t)
			target, peers := pick(pods)
			var rotations func() []time.Time
			stopWatch := func() {}
			if f.Name == "stale" {
				rotations, stopWatch = watchCanary(ctx, t)
			}
			e, err := Heal(ctx, cl, obs, f, target, peers, DefaultLimits, nil)
			if err != nil && e.Aftercare == "" {
				t.Fatalf("%s round %d: %v\n%s", f.Name, i, err, e.Timeline())
			}
			if e.Aftercare != "" {
				// The healing itself completed; what came after is a healer defect, counted.
				s.aftercare++
				t.Errorf("%s round %d: after the healing: %s", f.Name, i, e.Aftercare)
			}
			untouched(t, peers, e.Injected)
			drained := e.Drained
			if drained.IsZero() || (!e.Evicted.IsZero() && e.Evicted.Before(drained)) {
				drained = e.Evicted // terminating pods leave the ready endpoints too
			}
			s.verdict = append(s.verdict, e.VerdictSeen.Sub(e.Injected))
			s.drained = append(s.drained, drained.Sub(e.Injected))
			s.serving = append(s.serving, e.ReplAnswers.Sub(e.Injected))
			if rotations != nil {
				stopWatch()
				first := time.Time{}
				for _, r := range rotations() {
					if r.After(e.Injected) {
						first = r
						break
					}
				}
				if first.IsZero() {
					t.Errorf("%s round %d: no canary rotation seen after the cut", f.Name, i)
				} else {
					stale := first.Add(CanaryMaxLag)
					s.staleVerdict = append(s.staleVerdict, e.VerdictSeen.Sub(stale))
					s.staleDrained = append(s.staleDrained, drained.Sub(stale))
				}
			}
			t.Logf("%s round %d/%d: verdict %s, drained %s, replacement serving %s\n%s%s", f.Name, i, rounds,
				ms(s.verdict[len(s.verdict)-1]), ms(s.drained[len(s.drained)-1]), ms(s.serving[len(s.serving)-1]),
				e.Timeline(), healerLines(e))
		}
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func worst(ds []time.Duration) time.Duration {
	var w time.Duration
	for _, d := range ds {
		w = max(w, d)
	}
	return w
}

// watchCanary watches the canary Service until stop (or the test's end) and returns a function
// that lists when each rotation (a change of its externalName) was seen, in order.
func watchCanary(ctx context.Context, t *testing.T) (rotations func() []time.Time, stop func()) {
	t.Helper()
	w, err := cl.Client.CoreV1().Services(HealerNamespace).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=dnspulse-canary"})
	if err != nil {
		t.Fatalf("watching the canary Service: %v", err)
	}
	var (
		mu   sync.Mutex
		seen []time.Time
		last string
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			svc, ok := ev.Object.(*corev1.Service)
			if !ok || (ev.Type != watch.Added && ev.Type != watch.Modified) {
				continue
			}
			name := svc.Spec.ExternalName
			mu.Lock()
			if last != "" && name != last {
				seen = append(seen, time.Now())
			}
			last = name
			mu.Unlock()
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { w.Stop(); <-done }) }
	t.Cleanup(stop)
	return func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return append([]time.Time(nil), seen...)
	}, stop
}

// healerLines lists each healer's state and remediation lines on the episode's pod up to its
// eviction, timed like Timeline: which healer judged when, and when its drain returned.
func healerLines(e *Episode) string {
	var b strings.Builder
	for _, l := range AuditSince(cl, e.Injected) {
		if l.Replica != e.Pod || (l.Event != "state" && l.Event != "remediation") || (!e.Evicted.IsZero() && l.Time.After(e.Evicted)) {
			continue
		}
		what := string(l.To)
		if l.Event == "remediation" {
			what = string(l.Action) + " " + string(l.Result)
			if l.Action == "drain" { // whether its admission was a dry run run ahead, and how old
				what += ": " + l.Message
			}
		}
		fmt.Fprintf(&b, "  %+9.3fs  healer %s: %s %s\n", l.Time.Sub(e.Injected).Seconds(), l.Pod, l.Event, what)
	}
	return b.String()
}
