"""Hardware drivers for xinstrument benches. This package never imports xinstrument."""
