"""Exporters: the Hugging Face ``Dinov2Model`` layout and back."""
