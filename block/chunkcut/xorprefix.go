package chunkcut

import (
	"encoding/binary"

	"github.com/efficientgo/core/errors"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"

	"github.com/lethe-project/lethe/tombstones"
)

// xorKeptPrefix handles the commonest cut of a float chunk: a deleted range that covers its end,
// so that what is left is its first samples. The XOR encoding writes each sample from the state
// the ones before it left, so the encoding of the first k samples is the first bits of the
// chunk's: the new chunk is those bits under a header of k samples, byte for byte what
// re-encoding the k samples writes, without encoding them. ok is false for any other cut, which
// the caller re-encodes.
func xorKeptPrefix(chk chunkenc.Chunk, ivs tombstones.Intervals) (m chunks.Meta, ok bool, err error) {
	if chk.Encoding() != chunkenc.EncXOR {
		return m, false, nil
	}
	// One pass over the stream decodes the timestamps, skips the values and notes where the
	// last kept sample ends.
	b := chk.Bytes()
	if len(b) < 2 {
		return m, false, errors.Newf("XOR chunk of %d bytes", len(b))
	}
	var (
		r                 = bitReader{b: b[2:]}
		total             = int(binary.BigEndian.Uint16(b))
		t                 int64
		tDelta            uint64
		leading, trailing = uint8(0xff), uint8(0)
		k, bits, iv       int
		cut               bool
	)
	for i := 0; i < total; i++ {
		switch i {
		case 0:
			t, r.err = binary.ReadVarint(&r)
			r.skip(64)
		case 1:
			tDelta, r.err = binary.ReadUvarint(&r)
			t += int64(tDelta)
			r.skipValue(&leading, &trailing)
		default:
			tDelta = uint64(int64(tDelta) + r.dod())
			t += int64(tDelta)
			r.skipValue(&leading, &trailing)
		}
		if r.err != nil {
			return m, false, errors.Wrapf(r.err, "decode XOR chunk: sample %d", i)
		}
		// The intervals are sorted and disjoint, the timestamps ascending.
		for iv < len(ivs) && ivs[iv].Maxt < t {
			iv++
		}
		switch covered := iv < len(ivs) && ivs[iv].Mint <= t; {
		case covered:
			cut = true
		case cut:
			return m, false, nil // A sample after the cut survives.
		default:
			if k == 0 {
				m.MinTime = t
			}
			m.MaxTime = t
			k++
			bits = r.pos
		}
	}
	if k == 0 || !cut {
		return m, false, nil
	}
	out := make([]byte, 2+(bits+7)/8)
	binary.BigEndian.PutUint16(out, uint16(k))
	copy(out[2:], b[2:])
	if r := bits % 8; r != 0 {
		out[len(out)-1] &= byte(0xff << (8 - r)) // The bits after the k-th sample's are not written.
	}
	c, err := chunkenc.FromData(chunkenc.EncXOR, out)
	if err != nil {
		return m, false, err
	}
	m.Chunk = c
	return m, true, nil
}

// bitReader reads a bit stream, most significant bit first.
type bitReader struct {
	b   []byte
	pos int // in bits
	err error
}

func (r *bitReader) bit() uint64 {
	if r.pos >= 8*len(r.b) {
		return r.bits(1) // Sets the error.
	}
	v := uint64(r.b[r.pos>>3]>>(7-r.pos&7)) & 1
	r.pos++
	return v
}

// bits reads n <= 64 bits.
func (r *bitReader) bits(n int) uint64 {
	if r.err != nil || r.pos+n > 8*len(r.b) {
		if r.err == nil {
			r.err = errors.New("stream ends early")
		}
		return 0
	}
	if i := r.pos >> 3; n <= 56 && i+8 <= len(r.b) {
		// The 8 bytes from the current one hold at least 57 bits from the position on.
		v := binary.BigEndian.Uint64(r.b[i:]) << (r.pos & 7) >> (64 - n)
		r.pos += n
		return v
	}
	var v uint64
	for n > 0 {
		off := r.pos % 8
		take := min(8-off, n)
		v = v<<take | uint64(r.b[r.pos/8]>>(8-off-take))&(1<<take-1)
		r.pos += take
		n -= take
	}
	return v
}

func (r *bitReader) skip(n int) {
	if r.err == nil && n < 0 {
		r.err = errors.New("corrupt stream: negative length") // Leading and trailing zeros over 64.
	}
	if r.err == nil && r.pos+n > 8*len(r.b) {
		r.err = errors.New("stream ends early")
	}
	if r.err != nil {
		return
	}
	r.pos += n
}

// skipValue skips an XOR-encoded value: 0 (unchanged), or 1 and the bits of its XOR with the
// previous value, under the previous leading and trailing zero counts (0) or new ones (1).
func (r *bitReader) skipValue(leading, trailing *uint8) {
	if r.bit() == 0 {
		return
	}
	if r.bit() == 1 {
		*leading = uint8(r.bits(5))
		mbits := uint8(r.bits(6))
		if mbits == 0 {
			mbits = 64
		}
		*trailing = 64 - *leading - mbits
	}
	r.skip(64 - int(*leading) - int(*trailing))
}

// ReadByte reads 8 bits, for the varints of the stream, which are not byte-aligned.
func (r *bitReader) ReadByte() (byte, error) {
	v := r.bits(8)
	return byte(v), r.err
}

// dod reads a delta of delta of timestamps: 0, or 10, 110, 1110 or 1111 and a signed number of
// 14, 17, 20 or 64 bits.
func (r *bitReader) dod() int64 {
	size := 0
	for _, s := range []int{14, 17, 20, 64} {
		if r.bit() == 0 {
			break
		}
		size = s
	}
	switch size {
	case 0:
		return 0
	case 64:
		return int64(r.bits(64))
	}
	v := r.bits(size)
	if v > 1<<(size-1) {
		v -= 1 << size // Negative.
	}
	return int64(v)
}
