package rewriter

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
	it := chk.Iterator(nil)
	k, cut := 0, false
	for it.Next() != chunkenc.ValNone {
		t := it.AtT()
		switch covered := ivs.Covers(t); {
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
		}
	}
	if err := it.Err(); err != nil {
		return m, false, errors.Wrap(err, "decode chunk")
	}
	if k == 0 || !cut {
		return m, false, nil
	}
	b := chk.Bytes()
	n, err := xorPrefixBits(b, k)
	if err != nil {
		return m, false, err
	}
	out := make([]byte, 2+(n+7)/8)
	binary.BigEndian.PutUint16(out, uint16(k))
	copy(out[2:], b[2:])
	if r := n % 8; r != 0 {
		out[len(out)-1] &= byte(0xff << (8 - r)) // The bits after the k-th sample's are not written.
	}
	c, err := chunkenc.FromData(chunkenc.EncXOR, out)
	if err != nil {
		return m, false, err
	}
	m.Chunk = c
	return m, true, nil
}

// xorPrefixBits returns how many bits of the XOR chunk b's stream (after its 2-byte header) its
// first k samples take.
func xorPrefixBits(b []byte, k int) (int, error) {
	if len(b) < 2 || int(binary.BigEndian.Uint16(b)) < k {
		return 0, errors.Newf("XOR chunk of %d bytes has fewer than %d samples", len(b), k)
	}
	r := bitReader{b: b[2:]}
	leading, trailing := uint8(0xff), uint8(0)
	value := func() {
		if r.bit() == 0 {
			return // Unchanged.
		}
		if r.bit() == 1 {
			leading = uint8(r.bits(5))
			mbits := uint8(r.bits(6))
			if mbits == 0 {
				mbits = 64
			}
			trailing = 64 - leading - mbits
		}
		r.skip(64 - int(leading) - int(trailing))
	}
	varint := func() {
		for i := 0; i < binary.MaxVarintLen64 && r.bits(8)&0x80 != 0; i++ {
		}
	}
	for i := 0; i < k && r.err == nil; i++ {
		switch i {
		case 0:
			varint()
			r.skip(64)
		case 1:
			varint()
			value()
		default:
			// Delta of delta: 0, or 10, 110, 1110, 1111 and 14, 17, 20 or 64 bits.
			size := 0
			for _, s := range []int{14, 17, 20, 64} {
				if r.bit() == 0 {
					break
				}
				size = s
			}
			r.skip(size)
			value()
		}
	}
	if r.err != nil {
		return 0, errors.Wrapf(r.err, "XOR chunk: sample %d", k)
	}
	return r.pos, nil
}

// bitReader reads a bit stream, most significant bit first.
type bitReader struct {
	b   []byte
	pos int // in bits
	err error
}

func (r *bitReader) bit() uint64 { return r.bits(1) }

func (r *bitReader) bits(n int) uint64 {
	if r.err != nil || r.pos+n > 8*len(r.b) {
		if r.err == nil {
			r.err = errors.New("stream ends early")
		}
		return 0
	}
	var v uint64
	for i := 0; i < n; i++ {
		v = v<<1 | uint64(r.b[r.pos/8]>>(7-r.pos%8))&1
		r.pos++
	}
	return v
}

func (r *bitReader) skip(n int) {
	if r.err == nil && r.pos+n > 8*len(r.b) {
		r.err = errors.New("stream ends early")
		return
	}
	r.pos += n
}
