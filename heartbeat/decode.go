package heartbeat

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// A Decoder decodes heartbeats as Parse does, with the same validation, the same errors
// and the same result, without allocating per field: a hand-written scanner for the
// heartbeat's own shape, which fills a Heartbeat in place and reuses its storage (maps,
// slices, and strings whose bytes did not change since the last decode: the replica, the
// verdict, the rcode names). A heartbeat polled or streamed from one replica every tick
// costs no garbage but what changed.
//
// Anything unusual for a heartbeat written by pulse (a string with escapes or non-ASCII
// bytes, a key that differs from a field name only by case, null, a number that is not a
// plain integer where one is expected, a syntax error) sends the decoder to Parse, so
// that the outcome is always Parse's; only the common case is fast. FuzzDecoderMatchesParse
// holds it to that.
//
// The zero value is ready to use; a Decoder is not safe for concurrent use.
type Decoder struct {
	// KeepWindows, when not nil, names the windows Decode keeps in Heartbeat.Windows. The
	// others must be there and be objects, as for Parse, but are read for their syntax only:
	// neither decoded nor validated, and left out of the result. A reader that uses one
	// window (the healer reads 1s) skips two thirds of a heartbeat's numbers and maps.
	KeepWindows []string

	tick    []byte // the last tick string and its value: the same every time
	tickVal Duration
	scratch []byte              // unescaped strings
	spare   []map[string]uint64 // rcode maps of windows that were dropped, to reuse
}

// Decode decodes body into hb, reusing hb's maps and slices: values taken from an earlier
// Decode into the same hb (a map, the Reasons slice, the InFlight pointer) change with it.
// Keep two Heartbeats and alternate if the previous one must survive the next decode.
func (d *Decoder) Decode(body []byte, hb *Heartbeat) error {
	if len(body) > MaxBodyBytes {
		return fmt.Errorf("heartbeat: body larger than %d bytes", MaxBodyBytes)
	}
	keep := d.keepMask()
	s := scanner{b: body, d: d, keep: keep}
	if !s.heartbeat(hb) {
		return d.slow(body, hb, keep)
	}
	return hb.validate(keep, s.skipped)
}

// keepMask is KeepWindows as bits of WindowKeys.
func (d *Decoder) keepMask() uint32 {
	if d.KeepWindows == nil {
		return allWindows
	}
	var m uint32
	for _, k := range d.KeepWindows {
		if i := slices.Index(WindowKeys, k); i >= 0 {
			m |= 1 << i
		}
	}
	return m
}

// slow is Parse, for the inputs the scanner does not take.
func (d *Decoder) slow(body []byte, hb *Heartbeat, keep uint32) error {
	p, err := parse(body, keep)
	if err != nil {
		return err
	}
	d.keep(hb)
	*hb = *p
	return nil
}

// keep saves hb's rcode maps for later decodes before hb is overwritten.
func (d *Decoder) keep(hb *Heartbeat) {
	for _, w := range hb.Windows {
		d.free(w.Rcodes)
	}
}

// scanner walks one heartbeat. Each method returns false when the input is anything it
// does not decode exactly as encoding/json would; Decode then asks Parse.
type scanner struct {
	b []byte
	i int
	d *Decoder
	// keep: the windows decoded (bits of WindowKeys); skipped: those read for syntax only.
	keep, skipped uint32
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) consume(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// next steps through an object or array: before the first member (first true) it takes
// the opening character and an immediate close; after a member a comma or the close. It
// reports whether a member follows, and ok false on a syntax error.
func (s *scanner) next(first bool, open, close byte) (more, ok bool) {
	if first {
		if !s.consume(open) {
			return false, false
		}
		if s.consume(close) {
			return false, true
		}
		return true, true
	}
	if s.consume(',') {
		return true, true
	}
	return false, s.consume(close)
}

// key reads a member's key and the colon after it.
func (s *scanner) key() ([]byte, bool) {
	k, ok := s.str()
	return k, ok && s.consume(':')
}

// str reads a string without escapes (keys, rcode names, times, durations: all pulse
// writes but for free text) and returns the bytes between the quotes; anything else is
// left to Parse. Bytes beyond ASCII must be valid UTF-8 (encoding/json replaces invalid
// ones).
func (s *scanner) str() ([]byte, bool) {
	b, escaped, ok := s.rawStr()
	return b, ok && !escaped
}

// rawStr reads a string and reports whether it has escapes (decoded by text).
func (s *scanner) rawStr() (b []byte, escaped, ok bool) {
	if !s.consume('"') {
		return nil, false, false
	}
	start, ascii := s.i, true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			b = s.b[start : s.i-1]
			return b, escaped, ascii || utf8.Valid(b)
		case c == '\\':
			escaped = true
			s.i++ // the escaped character, a quote included, is not the end
		case c < 0x20:
			return nil, false, false
		case c >= 0x80:
			ascii = false
		}
		s.i++
	}
	return nil, false, false
}

// text reads a string into *dst, keeping *dst when it is the same. Escapes are decoded
// as encoding/json decodes them (encoding/json itself writes '<', '>' and '&' as \u003c,
// \u003e and \u0026, which verdict reasons have); surrogate pairs are left to Parse.
func (s *scanner) text(dst *string) bool {
	b, escaped, ok := s.rawStr()
	if !ok {
		return false
	}
	if escaped {
		if b, ok = s.d.unescape(b); !ok {
			return false
		}
	}
	if string(b) != *dst {
		*dst = string(b)
	}
	return true
}

// unescape decodes the escapes of a string into the decoder's scratch buffer.
func (d *Decoder) unescape(b []byte) ([]byte, bool) {
	out := d.scratch[:0]
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			out = append(out, b[i])
			continue
		}
		if i++; i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case '"', '\\', '/':
			out = append(out, b[i])
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+4 >= len(b) {
				return nil, false
			}
			r, err := strconv.ParseUint(unsafeString(b[i+1:i+5]), 16, 32)
			if err != nil || utf16.IsSurrogate(rune(r)) {
				return nil, false
			}
			out = utf8.AppendRune(out, rune(r))
			i += 4
		default:
			return nil, false
		}
	}
	d.scratch = out
	return out, true
}

// number returns the bytes of a JSON number.
func (s *scanner) number() ([]byte, bool) {
	s.ws()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	digits := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	if s.i == digits || (s.b[digits] == '0' && s.i-digits > 1) {
		return nil, false
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		frac := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		if s.i == frac {
			return nil, false
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		exp := s.i
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
		}
		if s.i == exp {
			return nil, false
		}
	}
	return s.b[start:s.i], true
}

// uint reads a plain non-negative integer that fits a uint64 (encoding/json rejects the
// rest for a uint64 field; the scanner leaves them to it).
func (s *scanner) uint(dst *uint64) bool {
	n, ok := s.number()
	if !ok {
		return false
	}
	v, err := strconv.ParseUint(unsafeString(n), 10, 64)
	*dst = v
	return err == nil
}

func (s *scanner) int(dst *int) bool {
	n, ok := s.number()
	if !ok {
		return false
	}
	v, err := strconv.ParseInt(unsafeString(n), 10, 0)
	*dst = int(v)
	return err == nil
}

func (s *scanner) float(dst *float64) bool {
	n, ok := s.number()
	if !ok {
		return false
	}
	v, err := strconv.ParseFloat(unsafeString(n), 64)
	*dst = v
	return err == nil
}

func (s *scanner) boolean(dst *bool) bool {
	s.ws()
	switch {
	case bytes.HasPrefix(s.b[s.i:], []byte("true")):
		*dst, s.i = true, s.i+4
	case bytes.HasPrefix(s.b[s.i:], []byte("false")):
		*dst, s.i = false, s.i+5
	default:
		return false
	}
	return true
}

// time reads an RFC 3339 time the way time.Time.UnmarshalJSON does (it is that).
func (s *scanner) time(dst *time.Time) bool {
	s.ws()
	start := s.i
	if _, ok := s.str(); !ok {
		return false
	}
	return dst.UnmarshalJSON(s.b[start:s.i]) == nil
}

func (s *scanner) duration(dst *Duration) bool {
	b, ok := s.str()
	if !ok {
		return false
	}
	if string(b) != string(s.d.tick) {
		v, err := time.ParseDuration(unsafeString(b))
		if err != nil {
			return false
		}
		s.d.tick, s.d.tickVal = append(s.d.tick[:0], b...), Duration(v)
	}
	*dst = s.d.tickVal
	return true
}

// skip reads any JSON value of a field the heartbeat does not have (a newer pulse's);
// encoding/json ignores them too. Strings with escapes are left to Parse.
func (s *scanner) skip() bool {
	s.ws()
	if s.i >= len(s.b) {
		return false
	}
	switch s.b[s.i] {
	case '{':
		more, ok := s.next(true, '{', '}')
		for ; more && ok; more, ok = s.next(false, '{', '}') {
			if _, kok := s.key(); !kok || !s.skip() {
				return false
			}
		}
		return ok
	case '[':
		more, ok := s.next(true, '[', ']')
		for ; more && ok; more, ok = s.next(false, '[', ']') {
			if !s.skip() {
				return false
			}
		}
		return ok
	case '"':
		_, ok := s.str()
		return ok
	case 't', 'f':
		var b bool
		return s.boolean(&b)
	default:
		_, ok := s.number()
		return ok
	}
}

// unknown decides a key that is no field: skipped, as encoding/json does, unless it
// matches a field but for case, which encoding/json would take for that field.
func (s *scanner) unknown(key []byte, fields ...string) bool {
	for _, f := range fields {
		if bytes.EqualFold(key, []byte(f)) {
			return false
		}
	}
	return s.skip()
}

// once marks field bit as read; a key that comes twice is left to Parse (encoding/json
// merges a repeated object into the first, which the scanner does not).
func once(got *uint32, bit uint32) bool {
	if *got&bit != 0 {
		return false
	}
	*got |= bit
	return true
}

// The scanner fills an existing Heartbeat and Parse a new one: a field the body does not
// have must end as Parse leaves it, zero. Each object keeps a bit per field it read and
// zeroes the others at its end.

func (s *scanner) heartbeat(hb *Heartbeat) bool {
	if hb.Windows == nil {
		hb.Windows = make(map[string]Window, len(WindowKeys))
	}
	var got, windows uint32
	reasons := hb.Reasons[:0]
	inflight := hb.InFlight
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		key, kok := s.key()
		if !kok {
			return false
		}
		var vok bool
		switch string(key) {
		case "version":
			vok = once(&got, 1<<0) && s.int(&hb.Version)
		case "replica":
			vok = once(&got, 1<<1) && s.text(&hb.Replica)
		case "seq":
			vok = once(&got, 1<<2) && s.uint(&hb.Seq)
		case "time":
			vok = once(&got, 1<<3) && s.time(&hb.Time)
		case "started":
			vok = once(&got, 1<<4) && s.time(&hb.Started)
		case "tick":
			vok = once(&got, 1<<5) && s.duration(&hb.Tick)
		case "windows":
			vok = once(&got, 1<<6) && s.windows(hb, &windows)
		case "selfProbe":
			vok = once(&got, 1<<7) && s.selfProbe(&hb.SelfProbe)
		case "verdict":
			vok = once(&got, 1<<8) && s.text(&hb.Verdict)
		case "reasons":
			vok = once(&got, 1<<9) && s.reasons(&reasons)
		case "inflight":
			if inflight == nil {
				inflight = new(InFlight)
			}
			vok = once(&got, 1<<10) && s.inflight(inflight)
		default:
			vok = s.unknown(key, "version", "replica", "seq", "time", "started", "tick", "windows", "selfProbe", "verdict", "reasons", "inflight")
		}
		if !vok {
			return false
		}
	}
	s.ws()
	if !ok || s.i != len(s.b) { // trailing data is encoding/json's error
		return false
	}
	for k, w := range hb.Windows {
		if i := slices.Index(WindowKeys, k); i >= 0 && windows&(1<<i) != 0 {
			continue
		}
		s.d.free(w.Rcodes)
		delete(hb.Windows, k)
	}
	if got&(1<<0) == 0 {
		hb.Version = 0
	}
	if got&(1<<1) == 0 {
		hb.Replica = ""
	}
	if got&(1<<2) == 0 {
		hb.Seq = 0
	}
	if got&(1<<3) == 0 {
		hb.Time = time.Time{}
	}
	if got&(1<<4) == 0 {
		hb.Started = time.Time{}
	}
	if got&(1<<5) == 0 {
		hb.Tick = 0
	}
	if got&(1<<7) == 0 {
		hb.SelfProbe = SelfProbe{}
	}
	if got&(1<<8) == 0 {
		hb.Verdict = ""
	}
	hb.Reasons = nil
	if got&(1<<9) != 0 {
		if reasons == nil {
			reasons = []string{} // [] is an empty slice, as encoding/json makes it
		}
		hb.Reasons = reasons
	}
	hb.InFlight = nil
	if got&(1<<10) != 0 {
		hb.InFlight = inflight
	}
	return true
}

func (s *scanner) windows(hb *Heartbeat, seen *uint32) bool {
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		k, kok := s.key()
		if !kok {
			return false
		}
		name, i := windowKey(k)
		if i < 0 {
			return false // a window pulse does not write: Parse keeps it
		}
		if s.keep&(1<<i) == 0 {
			// Not wanted: an object (Parse would fail on anything else), its syntax checked.
			if s.ws(); s.i >= len(s.b) || s.b[s.i] != '{' || !s.skip() {
				return false
			}
			s.skipped |= 1 << i
			continue
		}
		w := hb.Windows[name]
		if !s.window(&w) {
			return false
		}
		hb.Windows[name] = w
		*seen |= 1 << i
	}
	return ok
}

func (s *scanner) reasons(reasons *[]string) bool {
	more, ok := s.next(true, '[', ']')
	for ; more && ok; more, ok = s.next(false, '[', ']') {
		r := *reasons
		var text string
		if len(r) < cap(r) {
			text = r[:len(r)+1][len(r)] // the string decoded there last time
		}
		if !s.text(&text) {
			return false
		}
		*reasons = append(r, text)
	}
	return ok
}

// free keeps a map of rcodes no longer needed for a later window.
func (d *Decoder) free(m map[string]uint64) {
	if m != nil && len(d.spare) < 8 {
		clear(m)
		d.spare = append(d.spare, m)
	}
}

func (s *scanner) window(w *Window) bool {
	rc := w.Rcodes
	*w = Window{} // encoding/json decodes each map value into a fresh one
	var got uint32
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		key, kok := s.key()
		if !kok {
			ok = false
			break
		}
		var vok bool
		switch string(key) {
		case "queries":
			vok = once(&got, 1<<0) && s.uint(&w.Queries)
		case "rcodes":
			if vok = once(&got, 1<<1); vok {
				if rc == nil {
					if n := len(s.d.spare); n > 0 {
						rc, s.d.spare = s.d.spare[n-1], s.d.spare[:n-1]
					} else {
						rc = make(map[string]uint64, 4)
					}
				}
				clear(rc)
				vok = s.rcodes(rc)
			}
		case "dropped":
			vok = once(&got, 1<<2) && s.uint(&w.Dropped)
		case "latencyMicros":
			vok = once(&got, 1<<3) && s.latency(&w.LatencyMicros)
		case "rcodeEntropy":
			vok = once(&got, 1<<4) && s.float(&w.RcodeEntropy)
		case "nxdomainRatio":
			vok = once(&got, 1<<5) && s.float(&w.NXDomainRatio)
		case "servfailRatio":
			vok = once(&got, 1<<6) && s.float(&w.ServfailRatio)
		case "servfailSourceEntropy":
			vok = once(&got, 1<<7) && s.float(&w.ServfailSourceEntropy)
		default:
			vok = s.unknown(key, "queries", "rcodes", "dropped", "latencyMicros", "rcodeEntropy", "nxdomainRatio", "servfailRatio", "servfailSourceEntropy")
		}
		if !vok {
			ok = false
			break
		}
	}
	switch {
	case !ok: // hb still holds rc: Decode's fallback gives it back with the rest
	case got&(1<<1) != 0:
		w.Rcodes = rc
	default:
		s.d.free(rc)
	}
	return ok
}

func (s *scanner) rcodes(rc map[string]uint64) bool {
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		k, kok := s.key()
		var n uint64
		if !kok || !s.uint(&n) {
			return false
		}
		rc[rcodeName(k)] = n
	}
	return ok
}

func (s *scanner) latency(l *Latency) bool {
	var got uint32
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		k, kok := s.key()
		if !kok {
			return false
		}
		var vok bool
		switch string(k) {
		case "p50":
			vok = once(&got, 1<<0) && s.uint(&l.P50)
		case "p90":
			vok = once(&got, 1<<1) && s.uint(&l.P90)
		case "p99":
			vok = once(&got, 1<<2) && s.uint(&l.P99)
		case "max":
			vok = once(&got, 1<<3) && s.uint(&l.Max)
		default:
			vok = s.unknown(k, "p50", "p90", "p99", "max")
		}
		if !vok {
			return false
		}
	}
	return ok
}

func (s *scanner) selfProbe(p *SelfProbe) bool {
	var got uint32
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		key, kok := s.key()
		if !kok {
			return false
		}
		var vok bool
		switch string(key) {
		case "ok":
			vok = once(&got, 1<<0) && s.boolean(&p.OK)
		case "rcode":
			vok = once(&got, 1<<1) && s.text(&p.Rcode)
		case "latencyMicros":
			vok = once(&got, 1<<2) && s.uint(&p.LatencyMicros)
		case "time":
			vok = once(&got, 1<<3) && s.time(&p.Time)
		case "error":
			vok = once(&got, 1<<4) && s.text(&p.Error)
		case "pendingMicros":
			vok = once(&got, 1<<5) && s.uint(&p.PendingMicros)
		default:
			vok = s.unknown(key, "ok", "rcode", "latencyMicros", "time", "error", "pendingMicros")
		}
		if !vok {
			return false
		}
	}
	if got&(1<<0) == 0 {
		p.OK = false
	}
	if got&(1<<1) == 0 {
		p.Rcode = ""
	}
	if got&(1<<2) == 0 {
		p.LatencyMicros = 0
	}
	if got&(1<<3) == 0 {
		p.Time = time.Time{}
	}
	if got&(1<<4) == 0 {
		p.Error = ""
	}
	if got&(1<<5) == 0 {
		p.PendingMicros = 0
	}
	return ok
}

func (s *scanner) inflight(f *InFlight) bool {
	*f = InFlight{}
	var got uint32
	more, ok := s.next(true, '{', '}')
	for ; more && ok; more, ok = s.next(false, '{', '}') {
		k, kok := s.key()
		if !kok {
			return false
		}
		var vok bool
		switch string(k) {
		case "count":
			vok = once(&got, 1<<0) && s.uint(&f.Count)
		case "oldestMicros":
			vok = once(&got, 1<<1) && s.uint(&f.OldestMicros)
		default:
			vok = s.unknown(k, "count", "oldestMicros")
		}
		if !vok {
			return false
		}
	}
	return ok
}

// windowKey returns the window key as the constant string and its index in WindowKeys.
func windowKey(k []byte) (string, int) {
	for i, w := range WindowKeys {
		if string(k) == w {
			return w, i
		}
	}
	return "", -1
}

// rcodeNames are the names pulse writes for rcodes (miekg/dns's, and its own): looked up
// so that a known name costs no allocation.
var rcodeNames = []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
	"NOTAUTH", "NOTZONE", "BADSIG", "BADKEY", "BADTIME", "BADMODE", "BADNAME", "BADALG", "BADTRUNC", "BADCOOKIE", "DROPPED", "OTHER"}

func rcodeName(k []byte) string {
	for _, n := range rcodeNames {
		if string(k) == n {
			return n
		}
	}
	return string(k)
}

// unsafeString views b as a string for strconv, which does not keep it (the scanner
// ignores the error values that would).
func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
