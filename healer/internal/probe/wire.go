package probe

import (
	"bytes"
	"encoding/binary"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/dnspulse/dnspulse/healer/internal/check"
	"github.com/dnspulse/dnspulse/healer/internal/replica"
)

// ednsSize is the UDP payload size the probes advertise (the DNS flag day's 1232).
const ednsSize = 1232

// query is a check's question as a message: what a probe sends over UDP, packed once, with
// only the ID patched per probe (and what the TCP retry sends).
func query(c check.Check) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(c.Name, c.Type)
	q.RecursionDesired = true
	q.SetEdns0(ednsSize, false)
	return q
}

// packQuery packs a check's query with ID 0.
func packQuery(c check.Check) ([]byte, error) {
	q := query(c)
	q.Id = 0
	return q.Pack()
}

// scan walks a reply without unpacking it: it checks the layout (every name, record and
// length within the message), copies the message after its ID into sig with the TTL of
// every record zeroed (but OPT's, whose "TTL" holds the extended rcode), and returns the
// smallest TTL of the answer section (0 without answers), as check.MinTTL would. Two
// replies with the same sig are the same answer but for their IDs and TTLs: the second
// needs no unpacking (see answerCache). ok is false for anything it does not follow.
func scan(msg, sig []byte) (_ []byte, minTTL uint32, ok bool) {
	if len(msg) < 12 {
		return sig, 0, false
	}
	sig = append(sig[:0], msg[2:]...)
	qd, an := int(binary.BigEndian.Uint16(msg[4:])), int(binary.BigEndian.Uint16(msg[6:]))
	rrs := an + int(binary.BigEndian.Uint16(msg[8:])) + int(binary.BigEndian.Uint16(msg[10:]))
	off := 12
	for range qd {
		if off, ok = skipName(msg, off); !ok || off+4 > len(msg) {
			return sig, 0, false
		}
		off += 4
	}
	for i := range rrs {
		if off, ok = skipName(msg, off); !ok || off+10 > len(msg) {
			return sig, 0, false
		}
		typ := binary.BigEndian.Uint16(msg[off:])
		ttl := binary.BigEndian.Uint32(msg[off+4:])
		rdlen := int(binary.BigEndian.Uint16(msg[off+8:]))
		if i < an && (i == 0 || ttl < minTTL) {
			minTTL = ttl
		}
		if typ != dns.TypeOPT {
			clear(sig[off+4-2 : off+8-2])
		}
		off += 10 + rdlen
		if off > len(msg) {
			return sig, 0, false
		}
	}
	return sig, minTTL, true
}

// skipName steps over a (possibly compressed) name starting at off.
func skipName(msg []byte, off int) (int, bool) {
	for range 128 { // at most 127 labels in 255 bytes
		if off >= len(msg) {
			return 0, false
		}
		c := int(msg[off])
		switch {
		case c == 0:
			return off + 1, true
		case c&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, false
			}
			return off + 2, true
		case c&0xC0 != 0:
			return 0, false // extended label types: none in a reply to us
		}
		off += 1 + c
	}
	return 0, false
}

// answerCache is what the last fully unpacked reply of one check from one replica said:
// a replica answers the same thing probe after probe, and unpacking it (building records,
// canonical answer strings) would cost more than the rest of a probe together. A reply
// whose sig equals the cached one takes everything from it but its TTL.
type answerCache struct {
	sig     []byte
	rcode   int
	key     string // check.AnswerKey
	failure string // check.Check.Failure
	cname   string // the canary check's CNAME target ("" without one)
}

// judgeReply fills res from the reply msg to check c, through the cache when the reply is
// the same as last time (sig, from scan), else by unpacking it. It reports false when msg
// is not a reply to c's question (an ID reused after a timeout may bring the reply to
// another probe) or cannot be unpacked: it matches no probe.
func judgeReply(res *Result, c check.Check, msg []byte, cache *answerCache, scratch *[]byte, fresh replica.FreshnessSource) bool {
	sig, minTTL, scanned := scan(msg, *scratch)
	*scratch = sig
	if scanned && cache.sig != nil && bytes.Equal(sig, cache.sig) {
		res.Rcode, res.AnswerKey, res.Failure = cache.rcode, cache.key, cache.failure
		res.TTL = ttlDuration(minTTL)
		if c.Canary && fresh != nil && res.Failure == "" {
			if cache.cname == "" {
				res.CanaryWhy = "no CNAME for " + c.Name
			} else {
				res.CanaryOK, res.CanaryWhy = fresh.Accept(cache.cname, res.Sent, res.TTL)
			}
		}
		return true
	}
	reply := new(dns.Msg)
	if err := reply.Unpack(msg); err != nil || !sameQuestion(reply, c) {
		return false
	}
	Judge(res, c, reply, nil, fresh)
	if scanned {
		cache.sig = append(cache.sig[:0], sig...)
		cache.rcode, cache.key, cache.failure = res.Rcode, res.AnswerKey, res.Failure
		cache.cname = ""
		if c.Canary {
			cache.cname = check.CNAMETarget(reply.Answer, c.Name)
		}
	}
	return true
}

// sameQuestion says whether reply answers c's question.
func sameQuestion(reply *dns.Msg, c check.Check) bool {
	return len(reply.Question) == 1 && strings.EqualFold(reply.Question[0].Name, c.Name) && reply.Question[0].Qtype == c.Type
}

// ttlDuration is a TTL as check.MinTTL gives it.
func ttlDuration(ttl uint32) time.Duration { return time.Duration(ttl) * time.Second }
