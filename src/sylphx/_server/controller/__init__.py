"""The reconciler and the small policy modules it consults."""
