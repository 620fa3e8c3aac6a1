package chunkcut

import (
	"encoding/binary"

	"github.com/efficientgo/core/errors"
)

// bitReader reads a bit stream, most significant bit first.
type bitReader struct {
	b   []byte
	pos int // in bits
	err error
}

// errStreamEnds is the error of a read past the end of the stream.
var errStreamEnds = errors.New("stream ends early")

// bit reads one bit. It is small enough to be inlined: it is read once or twice a sample.
func (r *bitReader) bit() uint64 {
	if i := r.pos >> 3; i < len(r.b) {
		r.pos++
		return uint64(r.b[i]>>(8-r.pos+i<<3)) & 1
	}
	if r.err == nil {
		r.err = errStreamEnds
	}
	return 0
}

// ends records that the stream ended early, unless an error came first.
func (r *bitReader) ends() {
	if r.err == nil {
		r.err = errStreamEnds
	}
}

// bits reads n <= 64 bits.
func (r *bitReader) bits(n int) uint64 {
	if i := r.pos >> 3; n <= 56 && i+8 <= len(r.b) && r.err == nil {
		// The 8 bytes from the current one hold at least 57 bits from the position on.
		v := binary.BigEndian.Uint64(r.b[i:]) << (r.pos & 7) >> (64 - n)
		r.pos += n
		return v
	}
	return r.slowBits(n)
}

// slowBits is bits near the end of the stream, or of more than 56 bits.
func (r *bitReader) slowBits(n int) uint64 {
	if r.err != nil || r.pos+n > 8*len(r.b) {
		r.ends()
		return 0
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

// ReadByte reads 8 bits, for the varints of the stream, which are not byte-aligned.
func (r *bitReader) ReadByte() (byte, error) {
	v := r.bits(8)
	return byte(v), r.err
}

// dod reads a delta of delta of timestamps: 0, or 10, 110, 1110 or 1111 and a signed number of
// 14, 17, 20 or 64 bits.
func (r *bitReader) dod() int64 {
	if r.bit() == 0 {
		return 0 // The commonest: samples at a regular interval.
	}
	size := 14
	for _, s := range []int{17, 20, 64} {
		if r.bit() == 0 {
			break
		}
		size = s
	}
	switch size {
	case 64:
		return int64(r.bits(64))
	}
	v := r.bits(size)
	if v > 1<<(size-1) {
		v -= 1 << size // Negative.
	}
	return int64(v)
}
