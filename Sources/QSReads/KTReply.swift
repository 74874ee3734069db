import NIOCore

/// What the KT HTTP interface answers: a status, extra headers and a body.
struct KTReply: Sendable {
    var status: Int
    var headers: [(String, String)]
    /// Written to the socket as it is (a large reply is not copied again on its way).
    var body: ByteBuffer
    /// What kind of request it was, for the request counter (a fixed set of names).
    var kind: String
    /// Set for requests counted as bad: the reason, for the log line.
    var badReason: String?
    /// Set for refused writes: the procedure or method.
    var refusedWrite: String?
    /// What the reply holds of the read ports' reply budget, taken as it was gathered
    /// (`GatheredReply`): whoever writes it holds the body's bytes from there until the
    /// socket has taken them (`KTHTTPSession.heldBody`), or gives this back.
    var held = 0

    init(status: Int, headers: [(String, String)] = [], body: [UInt8] = [], kind: String,
         badReason: String? = nil, refusedWrite: String? = nil) {
        self.init(status: status, headers: headers, buffer: ByteBuffer(bytes: body), kind: kind, badReason: badReason, refusedWrite: refusedWrite)
    }

    init(status: Int, headers: [(String, String)] = [], buffer: ByteBuffer, kind: String,
         badReason: String? = nil, refusedWrite: String? = nil) {
        self.status = status
        self.headers = headers
        self.body = buffer
        self.kind = kind
        self.badReason = badReason
        self.refusedWrite = refusedWrite
    }
}

/// KT's error messages, as its server writes them.
enum KTMessages {
    static let noRecord = "DB: 7: no record: no record"
    static let invalidParameters = "invalid parameters"
    static let noSuchDatabase = "no such database"
    static let readOnly = "read-only: write through the QS root"
}

/// An HTTP date (`Tue, 24 Nov 2026 23:01:38 GMT`) for epoch seconds, as KT writes `X-Kt-Xt`.
func httpDate(_ epoch: UInt64) -> String {
    let days = Int64(epoch / 86400)
    let secs = Int(epoch % 86400)
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
    let weekdays = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
    let wd = weekdays[Int(days % 7 + 7) % 7]
    return "\(wd), \(two(Int(d))) \(months[Int(m) - 1]) \(y) \(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60)) GMT"
}
