-- The ONNX export of each version and its parity check (OnnxExport as JSON); NULL for versions trained before exports.
ALTER TABLE versions ADD COLUMN onnx jsonb;
