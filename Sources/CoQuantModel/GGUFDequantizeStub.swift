// TEMPORARY
extension GGMLType { var canDequantize: Bool { self == .f32 } }
func dequantizeBlocks(_ type: GGMLType, _ base: UnsafeRawPointer, _ out: UnsafeMutablePointer<Float>, _ r: Range<Int>) {
    for i in (r.lowerBound * 1)..<(r.upperBound * 1) { out[i] = base.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
}
