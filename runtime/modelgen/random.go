package modelgen

import (
	"math"
	"math/rand/v2"
)

// Random returns an MLP with layer widths sizes (input first, classes last) and
// weights drawn deterministically from seed, as a stand-in for a large trained model
// (delta and install benchmarks). sizes {784, 4096, 4096, 4096, 10} is about 117 MB of
// ONNX.
func Random(seed uint64, sizes ...int) *MLP {
	r := rand.New(rand.NewPCG(seed, 0x6d6c70))
	m := &MLP{}
	for i := 0; i+1 < len(sizes); i++ {
		l := Layer{In: sizes[i], Out: sizes[i+1], W: make([]float32, sizes[i]*sizes[i+1]), B: make([]float32, sizes[i+1])}
		fill(r, l.W, 0.05)
		fill(r, l.B, 0.01)
		m.Layers = append(m.Layers, l)
	}
	return m
}

func fill(r *rand.Rand, v []float32, scale float64) {
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
}

// RetrainLast returns a copy of m whose last layer has new weights drawn from seed (a
// retrained head), the other layers shared with m.
func (m *MLP) RetrainLast(seed uint64) *MLP {
	r := rand.New(rand.NewPCG(seed, 0x68656164))
	out := &MLP{Layers: append([]Layer(nil), m.Layers...)}
	last := out.Layers[len(out.Layers)-1]
	last.W, last.B = make([]float32, len(last.W)), make([]float32, len(last.B))
	fill(r, last.W, 0.05)
	fill(r, last.B, 0.01)
	out.Layers[len(out.Layers)-1] = last
	return out
}

// Perturb returns a copy of m with every weight moved by a small random amount (a full
// retrain from the same initialisation: every byte of every tensor may change).
func (m *MLP) Perturb(seed uint64, scale float64) *MLP {
	r := rand.New(rand.NewPCG(seed, 0x70657274))
	out := &MLP{}
	for _, l := range m.Layers {
		n := Layer{In: l.In, Out: l.Out, W: make([]float32, len(l.W)), B: make([]float32, len(l.B))}
		for i, w := range l.W {
			n.W[i] = w + float32(r.NormFloat64()*scale)
		}
		for i, b := range l.B {
			n.B[i] = b + float32(r.NormFloat64()*scale)
		}
		out.Layers = append(out.Layers, n)
	}
	return out
}

// HeScaled returns an MLP with layer widths sizes (input first, classes last), weights
// drawn from PCG(seed1, seed2) with He scaling (standard deviation √(2/inputs)) and zero
// biases: a stand-in for a compute-heavy model whose outputs stay in range through
// many ReLU layers.
func HeScaled(seed1, seed2 uint64, sizes ...int) *MLP {
	r := rand.New(rand.NewPCG(seed1, seed2))
	m := &MLP{}
	for i := 0; i+1 < len(sizes); i++ {
		in, out := sizes[i], sizes[i+1]
		l := Layer{In: in, Out: out, W: make([]float32, in*out), B: make([]float32, out)}
		fill(r, l.W, math.Sqrt(2/float64(in)))
		m.Layers = append(m.Layers, l)
	}
	return m
}

// DenseBench returns the ONNX bytes of the inference benchmark's wide model: dense
// 64-2304-2304-2304-2304-10, HeScaled from seeds 1 and 2, about 16 M multiply-adds per
// row (over 1 ms per run on one thread) and 85 MB of weights. bench/driver and bench/ab
// serve the same bytes.
func DenseBench() []byte {
	return HeScaled(1, 2, 64, 2304, 2304, 2304, 2304, 10).ONNX("wide", nil, nil)
}
