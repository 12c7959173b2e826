package hbreader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dnspulse/dnspulse/heartbeat"
)

// StaleTicks is how many heartbeat ticks seq may stay unchanged (and more than two
// read intervals) before it is stale: the process, or its ticker, is stuck though HTTP answers.
const StaleTicks = 3

// seqTracker follows a replica's seq and says whether it has stopped moving; pure, so the
// rule is tested with a fake clock.
type seqTracker struct {
	last    uint64
	changed time.Time
	reads   int
}

// observe records hb read at now; interval is the read interval.
func (s *seqTracker) observe(hb *heartbeat.Heartbeat, now time.Time, interval time.Duration) (stale bool, age time.Duration) {
	s.reads++
	if s.reads == 1 || hb.Seq != s.last {
		s.last, s.changed = hb.Seq, now
		return false, 0
	}
	age = now.Sub(s.changed)
	tick := time.Duration(hb.Tick)
	if tick <= 0 {
		tick = 100 * time.Millisecond
	}
	return age > max(StaleTicks*tick, 2*interval), age
}

// Fetch gets and decodes one heartbeat. Every failure is classified, never a panic.
func Fetch(ctx context.Context, client *http.Client, url string) (*heartbeat.Heartbeat, Kind, error) {
	body, kind, err := get(ctx, client, url)
	if err != nil {
		return nil, kind, err
	}
	hb, err := heartbeat.Parse(body)
	if err != nil {
		return nil, Invalid, err
	}
	return hb, OK, nil
}

// get reads the body of GET url, at most heartbeat.MaxBodyBytes+1 bytes (Parse rejects
// more), classifying a failure as Unreachable.
func get(ctx context.Context, client *http.Client, url string) ([]byte, Kind, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, Invalid, err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, Unreachable, fmt.Errorf("no answer within the read timeout")
		}
		return nil, Unreachable, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, Unreachable, fmt.Errorf("GET %s: status %s", heartbeat.Path, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, heartbeat.MaxBodyBytes+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, Unreachable, fmt.Errorf("body not read within the read timeout")
		}
		return nil, Unreachable, fmt.Errorf("reading the body: %w", err)
	}
	return body, OK, nil
}
