package chunkcut

import (
	"encoding/binary"
	"math/bits"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// xorState is what the XOR encoding writes a sample from: the previous timestamp, the previous
// timestamp delta, the previous value and the leading and trailing zero counts of the last value
// XOR written with new counts (leading 0xff before any), and how many samples came before.
type xorState struct {
	n                 int
	t                 int64
	tDelta            uint64
	v                 uint64
	leading, trailing uint8
}

// same reports whether a sample after s is written as after o: the encoding of the first and
// second sample differs from the others', which depend on nothing but the rest of the state.
func (s xorState) same(o xorState) bool {
	return (s.n == o.n || s.n >= 2 && o.n >= 2) && s.t == o.t && s.tDelta == o.tDelta && s.v == o.v && s.leading == o.leading && s.trailing == o.trailing
}

// xorCut cuts a float chunk by copying bits. The XOR encoding writes each sample from the state
// the samples before it left (xorState): a kept sample whose state in the new chunk is the one it
// had in the old chunk is written as the same bits, which are copied, a run of them at a time.
// Only the samples after a cut are encoded again, until the state is the old one's: at the
// latest after the first kept sample that the old chunk writes with new zero counts. The result
// is byte for byte what Prometheus' appender writes for the kept samples, in one chunk, or none
// if no sample is kept. ok is false for a chunk of another encoding.
func xorCut(chk chunkenc.Chunk, ivs tombstones.Intervals) (_ []chunks.Meta, ok bool, err error) {
	if chk.Encoding() != chunkenc.EncXOR {
		return nil, false, nil
	}
	b := chk.Bytes()
	if len(b) < 2 {
		return nil, false, errors.Newf("XOR chunk of %d bytes", len(b))
	}
	var (
		total = int(binary.BigEndian.Uint16(b))
		// The old chunk's stream, read from after its header; positions are bits of b.
		r   = bitReader{b: b, pos: 16}
		old = xorState{leading: 0xff}
		// The new chunk, its header filled in at the end.
		w   = bitWriter{b: make([]byte, 2, len(b)), n: 16}
		cur = xorState{leading: 0xff}
		// copyFrom is where the run of old bits to copy starts, -1 when there is none.
		copyFrom = -1
		iv       int
		m        chunks.Meta
	)
	for i := 0; i < total; i++ {
		start := r.pos
		before := old
		old.readSample(&r)
		if r.err != nil {
			return nil, false, errors.Wrapf(r.err, "decode XOR chunk: sample %d", i)
		}
		// The intervals are sorted and disjoint, the timestamps ascending.
		for iv < len(ivs) && ivs[iv].Maxt < old.t {
			iv++
		}
		if iv < len(ivs) && ivs[iv].Mint <= old.t {
			if copyFrom >= 0 {
				w.copyBits(b, copyFrom, start)
				copyFrom = -1
			}
			continue
		}
		if cur.n == 0 {
			m.MinTime = old.t
		}
		m.MaxTime = old.t
		if cur.same(before) {
			// The same state: the same bits.
			if copyFrom < 0 {
				copyFrom = start
			}
			n := cur.n + 1
			cur = old
			cur.n = n
			continue
		}
		if copyFrom >= 0 {
			w.copyBits(b, copyFrom, start)
			copyFrom = -1
		}
		cur = w.writeSample(cur, old.t, old.v)
	}
	if copyFrom >= 0 {
		w.copyBits(b, copyFrom, r.pos)
	}
	if cur.n == 0 {
		return nil, true, nil
	}
	binary.BigEndian.PutUint16(w.b, uint16(cur.n))
	c, err := chunkenc.FromData(chunkenc.EncXOR, w.b)
	if err != nil {
		return nil, false, err
	}
	m.Chunk = c
	return []chunks.Meta{m}, true, nil
}

// readSample reads the next sample of the stream into s, as Prometheus' XOR iterator does.
func (s *xorState) readSample(r *bitReader) {
	switch s.n {
	case 0:
		s.t, r.err = binary.ReadVarint(r)
		s.v = r.bits(64)
	case 1:
		s.tDelta, r.err = binary.ReadUvarint(r)
		s.t += int64(s.tDelta)
		s.readValue(r)
	default:
		s.tDelta = uint64(int64(s.tDelta) + r.dod())
		s.t += int64(s.tDelta)
		s.readValue(r)
	}
	s.n++
}

// readValue reads an XOR-encoded value: 0 (unchanged), or 1 and the significant bits of its XOR
// with the previous value, under the previous leading and trailing zero counts (0) or new ones (1).
func (s *xorState) readValue(r *bitReader) {
	if r.bit() == 0 {
		return
	}
	if r.bit() == 1 {
		s.leading = uint8(r.bits(5))
		mbits := uint8(r.bits(6))
		if mbits == 0 {
			mbits = 64
		}
		if int(s.leading)+int(mbits) > 64 {
			r.err = errors.New("corrupt stream: leading and significant bits over 64")
			return
		}
		s.trailing = 64 - s.leading - mbits
	}
	if s.leading == 0xff {
		r.err = errors.New("corrupt stream: a value reuses zero counts before any")
		return
	}
	sig := 64 - int(s.leading) - int(s.trailing)
	s.v ^= r.bits(sig) << s.trailing
}

// bitWriter writes a bit stream, most significant bit first, as Prometheus' bstream does: the
// bits after the last written are zero.
type bitWriter struct {
	b []byte
	n int // Bits written.
}

// writeBits writes the n <= 64 low bits of v.
func (w *bitWriter) writeBits(v uint64, n int) {
	if n <= 0 {
		return
	}
	v <<= 64 - n // The bits to write first are the top ones; those after them are zero.
	if off := w.n % 8; off != 0 {
		// The last byte's low 8-off bits are free.
		free := 8 - off
		w.b[len(w.b)-1] |= byte(v >> (56 + off))
		if n <= free {
			w.n += n
			return
		}
		v <<= free
		n -= free
		w.n += free
	}
	for ; n >= 8; n -= 8 {
		w.b = append(w.b, byte(v>>56))
		v <<= 8
		w.n += 8
	}
	if n > 0 {
		w.b = append(w.b, byte(v>>56))
		w.n += n
	}
}

// copyBits writes the bits [from, to) of src.
func (w *bitWriter) copyBits(src []byte, from, to int) {
	r := bitReader{b: src, pos: from}
	if head := (8 - w.n%8) % 8; head > 0 {
		// Up to the writer's next byte boundary.
		k := min(head, to-from)
		w.writeBits(r.bits(k), k)
		from += k
	}
	if k := (to - from) / 8; k > 0 {
		// Whole bytes: as they are when aligned alike, else each from two of src.
		i, sh := from/8, from%8
		if sh == 0 {
			w.b = append(w.b, src[i:i+k]...)
		} else {
			for j := i; j < i+k; j++ {
				w.b = append(w.b, src[j]<<sh|src[j+1]>>(8-sh))
			}
		}
		w.n += 8 * k
		from += 8 * k
	}
	r.pos = from
	w.writeBits(r.bits(to-from), to-from)
}

// writeSample writes the sample (t, v) after the state s, as Prometheus' XOR appender does, and
// returns the state after it.
func (w *bitWriter) writeSample(s xorState, t int64, v uint64) xorState {
	var buf [binary.MaxVarintLen64]byte
	switch s.n {
	case 0:
		for _, c := range buf[:binary.PutVarint(buf[:], t)] {
			w.writeBits(uint64(c), 8)
		}
		w.writeBits(v, 64)
		s.tDelta = 0
	case 1:
		s.tDelta = uint64(t - s.t)
		for _, c := range buf[:binary.PutUvarint(buf[:], s.tDelta)] {
			w.writeBits(uint64(c), 8)
		}
		w.writeValue(&s, v)
	default:
		tDelta := uint64(t - s.t)
		dod := int64(tDelta - s.tDelta)
		switch {
		case dod == 0:
			w.writeBits(0, 1)
		case bitRange(dod, 14):
			w.writeBits(0b10, 2)
			w.writeBits(uint64(dod), 14)
		case bitRange(dod, 17):
			w.writeBits(0b110, 3)
			w.writeBits(uint64(dod), 17)
		case bitRange(dod, 20):
			w.writeBits(0b1110, 4)
			w.writeBits(uint64(dod), 20)
		default:
			w.writeBits(0b1111, 4)
			w.writeBits(uint64(dod), 64)
		}
		s.tDelta = tDelta
		w.writeValue(&s, v)
	}
	s.t, s.v = t, v
	s.n++
	return s
}

// writeValue writes v's XOR with the previous value: under the previous zero counts when its
// significant bits fit them, under new ones otherwise.
func (w *bitWriter) writeValue(s *xorState, v uint64) {
	delta := v ^ s.v
	if delta == 0 {
		w.writeBits(0, 1)
		return
	}
	leading, trailing := uint8(min(bits.LeadingZeros64(delta), 31)), uint8(bits.TrailingZeros64(delta))
	if s.leading != 0xff && leading >= s.leading && trailing >= s.trailing {
		w.writeBits(0b10, 2)
		w.writeBits(delta>>s.trailing, 64-int(s.leading)-int(s.trailing))
		return
	}
	s.leading, s.trailing = leading, trailing
	sig := 64 - int(leading) - int(trailing)
	w.writeBits(0b11, 2)
	w.writeBits(uint64(leading), 5)
	w.writeBits(uint64(sig), 6) // 64 is written as 0.
	w.writeBits(delta>>trailing, sig)
}

// bitRange reports whether x fits the nbits of a delta of delta of timestamps.
func bitRange(x int64, nbits uint8) bool {
	return -((1<<(nbits-1))-1) <= x && x <= 1<<(nbits-1)
}
