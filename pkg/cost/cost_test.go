package cost

import "testing"

func TestOf(t *testing.T) {
	tests := []struct {
		seconds, price, want float64
	}{
		{3600, 0.067, 0.067},
		{90, 0.17, 0.17 * 90 / 3600},
		{0, 1, 0},
		{3600 * 24, 0, 0},
	}
	for _, tt := range tests {
		if got := Of(tt.seconds, tt.price); got != tt.want {
			t.Errorf("Of(%v, %v) = %v, want %v", tt.seconds, tt.price, got, tt.want)
		}
	}
}

func TestFormatParse(t *testing.T) {
	for _, p := range []float64{0, 0.067, 0.0035, 12.5, 1e6} {
		got, err := Parse(Format(p))
		if err != nil || got != p {
			t.Errorf("Parse(Format(%v)) = %v, %v", p, got, err)
		}
	}
	for _, bad := range []string{"", "-1", "NaN", "+Inf", "1e300", "0.1$", "0x10"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
