package events

import "testing"

func BenchmarkDecodeFleetLaunched(b *testing.B) {
	body := readGolden(b, TypeFleetLaunched)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := DecodeFleetLaunched(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeFleetLaunched(b *testing.B) {
	e := validFleetLaunched()
	for b.Loop() {
		if _, err := Encode(e); err != nil {
			b.Fatal(err)
		}
	}
}
