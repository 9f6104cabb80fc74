package modelgen

import (
	"math/rand/v2"
	"strings"
)

// wideSpec is the trained vibration model inside every WideModel.
const wideSpec = "1.1.0"

// Wide returns the vibration-anomaly model 1.1.0 inside a backbone width units wide, as
// a stand-in for a large model whose retrains change only its head (delta updates).
// The first layer computes the trained hidden units and width-16 random features;
// a width × width layer passes the trained units through (identity) and mixes the
// random ones; the head reads the trained units with the trained weights. The weights
// outside the trained ones are drawn from a fixed seed, so every Wide model of one width
// shares its first two layers byte for byte.
//
// head 0 is the trained head, ignoring the random features (zero weights). head n > 0 is
// a retrained head drawn from seed n: the trained weights moved by a little noise and
// small weights on the random features, so every weight of the last layer changes while
// the model still classifies like 1.1.0. width 1024 is about 4.2 MB of ONNX.
func Wide(width int, head uint64) *MLP {
	s, _ := SpecOf(wideSpec)
	m := Train(s)
	h := s.Hidden
	width = max(width, h)
	r := rand.New(rand.NewPCG(uint64(width), 0x77696465))
	l0 := Layer{In: 4, Out: width, W: make([]float32, 4*width), B: make([]float32, width)}
	for j := range 4 {
		for k := range width {
			if k < h {
				l0.W[j*width+k] = m.Layers[0].W[j*h+k]
			} else {
				l0.W[j*width+k] = float32(r.NormFloat64() * 0.05)
			}
		}
	}
	for k := range width {
		if k < h {
			l0.B[k] = m.Layers[0].B[k]
		} else {
			l0.B[k] = float32(r.NormFloat64() * 0.01)
		}
	}
	// Trained units are >= 0 after the ReLU, so an identity row passes them unchanged.
	l1 := Layer{In: width, Out: width, W: make([]float32, width*width), B: make([]float32, width)}
	for j := range width {
		for k := range width {
			switch {
			case j < h && k < h:
				if j == k {
					l1.W[j*width+k] = 1
				}
			case k >= h:
				l1.W[j*width+k] = float32(r.NormFloat64() * 0.05)
			}
		}
	}
	classes := m.Layers[1].Out
	l2 := Layer{In: width, Out: classes, W: make([]float32, width*classes), B: append([]float32(nil), m.Layers[1].B...)}
	copy(l2.W, m.Layers[1].W) // rows 0..h-1: the trained head
	if head > 0 {
		hr := rand.New(rand.NewPCG(head, 0x68656164))
		for i := range l2.W {
			scale := 1e-3
			if i < h*classes {
				scale = 0.02
			}
			l2.W[i] += float32(hr.NormFloat64() * scale)
		}
		for i := range l2.B {
			l2.B[i] += float32(hr.NormFloat64() * 0.02)
		}
	}
	return &MLP{Layers: []Layer{l0, l1, l2}}
}

// WideModel returns the ONNX bytes of Wide(width, head), published as version (its
// metadata carries version and the drift baseline, as Model's do).
func WideModel(version string, width int, head uint64) []byte {
	meta := baselineMeta(version)
	return Wide(width, head).ONNX("vibration_anomaly_wide_"+strings.ReplaceAll(version, ".", "_"), meta,
		[]string{"edgeward.version", "edgeward.baseline"})
}
