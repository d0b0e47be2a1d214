import CoQuantTensor

// Past keys (post-RoPE) and values per layer, position-major so that appending is one copy:
//   fp32    keys/values [capacity, KV·hd]
//   packed  codes [capacity, KV, rowBytes] and (scale, zero) grids [capacity, KV, blocks, 2] per layer, at a quantized
//           model's KV bits (KVRowCodec; coquant_kernels.h "Packed KV cache"). Decoding attends over the codes
//           directly; a prompt chunk attends over the prefix dequantized to fp32, which is what the simulator's fake
//           quantized keys and values hold, bit for bit.

/// How a quantized model's KV cache stores a (token, KV head) row of keys and of values: QuaRot one block of the
/// scheme's bits per head (keys' range containing 0, values' plain min/max); ResQ/CoQuant hd − r_h columns at the
/// scheme's bits and the last r_h at 8.
public struct KVCacheFormat: Sendable, Equatable {
    public let keys: KVRowCodec
    public let values: KVRowCodec

    public init(keys: [ActivationBlock], values: [ActivationBlock], headDim: Int) {
        self.keys = KVRowCodec(blocks: keys, headDim: headDim)
        self.values = KVRowCodec(blocks: values, headDim: headDim)
    }
}

public final class KVCache {
    public private(set) var length = 0
    public let capacity: Int
    /// nil: fp32.
    public let format: KVCacheFormat?
    let kvHeads: Int, headDim: Int
    var width: Int { kvHeads * headDim }
    /// Per layer: fp32 rows, or codes and grids.
    var keys: [[Float]] = [], values: [[Float]] = []
    var keyCodes: [[UInt8]] = [], valueCodes: [[UInt8]] = []
    var keyGrids: [[Float]] = [], valueGrids: [[Float]] = []

    public init(config: ModelConfiguration, capacity: Int, format: KVCacheFormat? = nil) {
        self.capacity = capacity
        self.format = format
        kvHeads = config.numKeyValueHeads
        headDim = config.headDim
        let L = config.numHiddenLayers, rows = capacity * config.numKeyValueHeads
        if let f = format {
            keyCodes = Array(repeating: [UInt8](repeating: 0, count: rows * f.keys.rowBytes), count: L)
            valueCodes = Array(repeating: [UInt8](repeating: 0, count: rows * f.values.rowBytes), count: L)
            keyGrids = Array(repeating: [Float](repeating: 0, count: rows * f.keys.gridCount), count: L)
            valueGrids = Array(repeating: [Float](repeating: 0, count: rows * f.values.gridCount), count: L)
        } else {
            keys = Array(repeating: [Float](repeating: 0, count: capacity * width), count: L)
            values = keys
        }
    }

    func advance(by n: Int) { length += n }
    public func reset() { length = 0 }

    /// Bytes the cache holds (all layers, full capacity).
    public var byteCount: Int {
        [keys, values, keyGrids, valueGrids].reduce(0) { $0 + $1.reduce(0) { $0 + 4 * $1.count } }
            + [keyCodes, valueCodes].reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } }
    }

    /// Layer `layer`'s cached keys or values as [length, KV·hd] fp32 (dequantized when packed; for tests and KV
    /// statistics).
    public func keys(layer: Int) -> [Float] { floats(layer, keys: true, positions: length) }
    public func values(layer: Int) -> [Float] { floats(layer, keys: false, positions: length) }

    /// Stores the new rows k, v [T, KV·hd] of layer l at positions start ..< start + T.
    func store(_ l: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, rows T: Int, at start: Int) {
        precondition(start + T <= capacity, "KV cache full (\(capacity) positions)")
        guard let f = format else {
            keys[l].withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: start * width).update(from: k, count: T * width) }
            values[l].withUnsafeMutableBufferPointer { $0.baseAddress!.advanced(by: start * width).update(from: v, count: T * width) }
            return
        }
        let r0 = start * kvHeads, n = T * kvHeads
        keyCodes[l].withUnsafeMutableBufferPointer { c in keyGrids[l].withUnsafeMutableBufferPointer { g in
            f.keys.quantize(k, rows: n, codes: c.baseAddress! + r0 * f.keys.rowBytes, grids: g.baseAddress! + r0 * f.keys.gridCount)
        } }
        valueCodes[l].withUnsafeMutableBufferPointer { c in valueGrids[l].withUnsafeMutableBufferPointer { g in
            f.values.quantize(v, rows: n, codes: c.baseAddress! + r0 * f.values.rowBytes, grids: g.baseAddress! + r0 * f.values.gridCount)
        } }
    }

    /// Layer l's keys and values at positions 0 ..< n as fp32 [n, KV·hd] (a copy when packed).
    func withFloats<R>(_ l: Int, positions n: Int, _ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
        guard format != nil else {
            return keys[l].withUnsafeBufferPointer { k in values[l].withUnsafeBufferPointer { v in body(k.baseAddress!, v.baseAddress!) } }
        }
        let k = floats(l, keys: true, positions: n), v = floats(l, keys: false, positions: n)
        return k.withUnsafeBufferPointer { k in v.withUnsafeBufferPointer { v in body(k.baseAddress!, v.baseAddress!) } }
    }

    func floats(_ l: Int, keys isKeys: Bool, positions n: Int) -> [Float] {
        guard let f = format else { return Array((isKeys ? keys : values)[l][0..<(n * width)]) }
        let codec = isKeys ? f.keys : f.values
        var out = [Float](repeating: 0, count: n * width)
        (isKeys ? keyCodes : valueCodes)[l].withUnsafeBufferPointer { c in
            (isKeys ? keyGrids : valueGrids)[l].withUnsafeBufferPointer { g in
                out.withUnsafeMutableBufferPointer { codec.dequantize(c.baseAddress!, grids: g.baseAddress!, rows: n * kvHeads, into: $0.baseAddress!) }
            }
        }
        return out
    }

    /// Decode attention of T ≤ a few new queries q [T, H·hd] (already stored) into ctx [T, H·hd].
    func attentionDecode(_ l: Int, _ q: UnsafePointer<Float>, _ ctx: UnsafeMutablePointer<Float>, rows T: Int, start: Int, heads H: Int) {
        guard let f = format else {
            keys[l].withUnsafeBufferPointer { k in values[l].withUnsafeBufferPointer { v in
                CoQuantTensor.attentionDecode(q, k.baseAddress!, v.baseAddress!, ctx, rows: T, start: start, heads: H,
                                              kvHeads: kvHeads, headDim: headDim)
            } }
            return
        }
        keyCodes[l].withUnsafeBufferPointer { kc in keyGrids[l].withUnsafeBufferPointer { kg in
            valueCodes[l].withUnsafeBufferPointer { vc in valueGrids[l].withUnsafeBufferPointer { vg in
                CoQuantTensor.attentionDecode(q, keys: kc.baseAddress!, kg.baseAddress!, f.keys,
                                              values: vc.baseAddress!, vg.baseAddress!, f.values,
                                              ctx, rows: T, start: start, heads: H, kvHeads: kvHeads)
            } }
        } }
    }
}
