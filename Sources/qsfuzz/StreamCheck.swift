import NIOCore

/// What a stream decoder made of some bytes: the messages it yielded, and the error that
/// stopped it (nil when it reached the end cleanly).
struct Decoded<Message> {
    var messages: [Message] = []
    var error: String?
}

/// Runs a stream decoder over `bytes` as NIO would run it on a socket, delivered in
/// pieces of `chunk` bytes (0: all at once), and closes the stream at the end.
func decodeStream<D: NIOSingleStepByteToMessageDecoder>(_ decoder: D, _ bytes: [UInt8], chunk: Int) -> Decoded<D.InboundOut> {
    var out = Decoded<D.InboundOut>()
    let processor = NIOSingleStepByteToMessageProcessor(decoder)
    var offset = 0
    let step = chunk > 0 ? chunk : max(bytes.count, 1)
    do {
        while offset < bytes.count {
            let end = min(bytes.count, offset + step)
            try processor.process(buffer: ByteBuffer(bytes: bytes[offset..<end])) { out.messages.append($0) }
            offset = end
        }
        try processor.finishProcessing(seenEOF: true) { out.messages.append($0) }
    } catch {
        out.error = "\(error)"
    }
    return out
}

/// The property every stream decoder keeps: the same bytes give the same messages and the
/// same error however the network splits them. Returns what the decoder made of them whole.
func decodeAnySplit<D: NIOSingleStepByteToMessageDecoder>(_ decoder: @autoclosure () -> D, _ bytes: [UInt8],
                                                          _ target: String) -> Decoded<D.InboundOut>
where D.InboundOut: Equatable {
    let whole = decodeStream(decoder(), bytes, chunk: 0)
    // Byte by byte for short inputs; in at most eight pieces for all (each piece re-parses
    // what is buffered, so byte by byte is quadratic in the input's length).
    let pieces = (bytes.count <= 64 ? [1] : []) + [max(1, (bytes.count + 7) / 8)]
    for chunk in pieces where bytes.count > chunk {
        let split = decodeStream(decoder(), bytes, chunk: chunk)
        check(split.messages == whole.messages, target, "\(chunk)-byte pieces gave other messages than the whole input")
        check(split.error == whole.error, target,
              "\(chunk)-byte pieces ended with \(split.error ?? "no error"), the whole input with \(whole.error ?? "no error")")
    }
    return whole
}

/// A broken property: crash, so the fuzzer keeps the input that shows it.
func check(_ condition: Bool, _ target: String, _ what: @autoclosure () -> String) {
    if !condition { fatalError("\(target): \(what())") }
}
