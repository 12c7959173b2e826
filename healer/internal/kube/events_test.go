package kube

import (
	"context"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/dnspulse/dnspulse/healer/api"
)

// The real events.k8s.io/v1 path: the broadcaster writes an Event regarding the pod, with
// the fields the API requires (action, reportingController).
func TestNotifierWritesEventsV1(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	client := fake.NewClientset(pod("a", "10.0.0.1", &rsOwner))
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Shutdown)
	cfg := baseConfig()
	m, err := NewWithClient(ctx, cfg, testOptions(), client, b.NewRecorder(scheme.Scheme, api.ReportingController))
	if err != nil {
		t.Fatal(err)
	}
	m.Notifier().Notify(target("a", "10.0.0.1"), api.ReasonReplicaDegraded, "probe timeouts")
	var ev eventsv1.Event
	eventually(t, "an events.k8s.io Event", func() bool {
		l, err := client.EventsV1().Events(testNS).List(ctx, metav1.ListOptions{})
		if err != nil || len(l.Items) == 0 {
			return false
		}
		ev = l.Items[0]
		return true
	})
	if ev.Regarding.Kind != "Pod" || ev.Regarding.Name != "a" || ev.Reason != "ReplicaDegraded" || ev.Type != "Warning" ||
		ev.Action != "Detect" || ev.ReportingController != api.ReportingController || ev.Note != "probe timeouts" {
		t.Fatalf("event = %+v", ev)
	}
}
