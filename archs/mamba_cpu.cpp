// Mamba's CPU kernels, compiled on first use by archs/mamba_cpu.py: the selective scan and the causal
// depthwise convolution before it, each forward and backward.
//
// Plain C++ with a C interface (called through ctypes; no PyTorch headers, so it builds in about a
// second). The scan computes what mamba-ssm's selective_scan_fn computes with delta_softplus, D and z,
// and the rank-r projection dt_t = W dt_low_t before it (a matrix product too thin to run well alone):
//     Δ_t = softplus(W dt_low_t + dt_bias)
//     h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t,   y_t = C_t · h_t + D x_t,   out_t = y_t · silu(z_t)
// per channel e with a state of size n. Shapes, row-major: x, out (b, l, e) contiguous; z (b, l, e) with
// rows `zs` elements apart (it is a view of in_proj's output); dt_low (b, l, r); W (e, r); a (e, n);
// B, C (b, l, n); D, dt_bias (e).
//
// Work is split into tasks = (batch row, block of EB channels); tasks [first, last) run in one call,
// and Python calls disjoint task ranges from several threads. Within a task the EB channels of a block
// are one value of a GCC/Clang vector type (`Vec`, one AVX register of floats), so every step of the
// recurrence is a handful of whole-register operations written out, not a loop the compiler may or may
// not vectorize. Each task owns what it writes: its block's rows of out, dx, ddt, dz; its slice of the
// boundary states and of the per-row partial sums dA, dD, dbias, dW (b, e, .); the sums over channels
// dB, dC, d dt_low go to accumulators (b, l, .) private to the call. Python adds the partial sums up.
//
// Memory: the forward keeps the state at every K-th step (the chunk boundaries, n·e·l/K numbers per
// row). The backward recomputes one chunk of K steps at a time into a scratch that stays in cache,
// then runs the adjoint recurrence backwards through it.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

constexpr long EB = 8;  // channels per task: the lanes of a Vec, one AVX register of floats
constexpr long K = 64;  // steps per chunk: the backward's scratch is about (2K + 1) n EB + 5 K EB numbers

// GCC drops vector_size on a dependent type, so each element type gets its own typedef.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
    typedef float type __attribute__((vector_size(EB * sizeof(float))));
};
template <>
struct VecOf<double> {
    typedef double type __attribute__((vector_size(EB * sizeof(double))));
};
template <typename T>
using Vec = typename VecOf<T>::type;
using IVec = std::int32_t __attribute__((vector_size(EB * sizeof(std::int32_t))));

struct Shape {
    long b, l, e, n, zs, r;
    long blocks() const { return (e + EB - 1) / EB; }
    long chunks() const { return (l + K - 1) / K; }
};

struct Task {
    long bi, blk, e0, w;  // batch row, channel block, its first channel, channels in it (<= EB)
};

Task task_of(long index, const Shape& s) {
    long bi = index / s.blocks(), blk = index % s.blocks();
    long e0 = blk * EB;
    return {bi, blk, e0, s.e - e0 < EB ? s.e - e0 : EB};
}

// Scratch arrays are plain T arrays, read and written a Vec at a time (memcpy of a constant size is one
// unaligned move, and sidesteps aliasing rules).
template <typename T>
inline Vec<T> ld(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <typename T>
inline void st(T* p, Vec<T> v) {
    std::memcpy(p, &v, sizeof v);
}

// The block's channels of one row, row[e0 .. e0 + w), zero in the lanes beyond w; and back.
template <typename T>
inline Vec<T> load(const T* row, const Task& tk) {
    if (tk.w == EB) return ld(row + tk.e0);
    Vec<T> v = {};
    for (long j = 0; j < tk.w; ++j) v[j] = row[tk.e0 + j];
    return v;
}

template <typename T>
inline void store(T* row, Vec<T> v, const Task& tk) {
    if (tk.w == EB) return st(row + tk.e0, v);
    for (long j = 0; j < tk.w; ++j) row[tk.e0 + j] = v[j];
}

template <typename V>
inline auto hsum(V v) {
    decltype(v[0] + 0) s = 0;
    for (long j = 0; j < EB; ++j) s += v[j];
    return s;
}

// r[i] = the sum of v[i]'s lanes, for EB = 8 vectors at once: three rounds of shuffles and adds
// (7 adds) instead of 8 separate horizontal sums. (GCC before 12 lacks __builtin_shufflevector.)
template <typename V>
inline V hsums(const V* v) {
    static_assert(EB == 8, "hsums is written for 8 lanes");
#if defined(__clang__) || __GNUC__ >= 12
    V p[4], q[2];
    for (int i = 0; i < 4; ++i)  // p[i] lanes: pairs of v[2i] and v[2i+1], interleaved
        p[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; ++i)  // q[i] lanes: quarters of v[4i .. 4i+3]
        q[i] = __builtin_shufflevector(p[2 * i], p[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(p[2 * i], p[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(q[0], q[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(q[0], q[1], 4, 5, 6, 7, 12, 13, 14, 15);
#else
    V r;
    for (long i = 0; i < EB; ++i) r[i] = hsum(v[i]);
    return r;
#endif
}

// out[i] += the sum of v[i]'s lanes, i < count <= EB.
template <typename T, typename V>
inline void add_sums(T* out, const V* v, long count) {
    if (count == EB) return st(out, ld(out) + hsums(v));
    for (long i = 0; i < count; ++i) out[i] += hsum(v[i]);
}

// f applied to every number of a scratch array, as one loop the compiler vectorizes (with libmvec
// for exp and log1p): functions of per-step values go here, once per chunk, not once per step.
template <typename T, typename F>
inline void each(T* a, long count, F f) {
    for (long i = 0; i < count; ++i) a[i] = f(a[i]);
}

template <typename T>
T softplus(T v) {
    return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
T sigmoid(T v) {
    return T(1) / (T(1) + std::exp(-v));
}

// exp(v) within a few float ulps: 2^(v log2 e) = 2^i 2^f with i the integer part and 2^f = (2^(f/2))^2
// from a degree-6 Taylor polynomial on |f/2| < 1/2. Written in vector operations so that it stays
// inline in the scan's inner loop, where it is the costliest operation. It saturates at 2^±126
// (1e-38 instead of 0 far below, 8e37 instead of inf far above), which nothing here can tell apart.
inline Vec<float> vexp(Vec<float> v) {
    Vec<float> u = v * 1.44269504f;
    u = u < -126.0f ? Vec<float>{} - 126.0f : u;
    u = u > 126.0f ? Vec<float>{} + 126.0f : u;
    IVec i = __builtin_convertvector(u, IVec);  // truncates toward zero, so |f| < 1
    Vec<float> g = (u - __builtin_convertvector(i, Vec<float>)) * (0.5f * 0.69314718f);  // (f/2) ln 2
    Vec<float> p = 1.0f + g * (1.0f + g * (0.5f + g * (1.0f / 6 + g * (1.0f / 24 + g * (1.0f / 120 + g * (1.0f / 720))))));
    Vec<float> scale;
    IVec bits = (i + 127) << 23;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * p * scale;
}

inline Vec<double> vexp(Vec<double> v) {  // float64 serves the parity tests: exact, not fast
    for (long j = 0; j < EB; ++j) v[j] = std::exp(v[j]);
    return v;
}

// What a task needs of the per-channel parameters: A and W transposed to (n, EB) and (r, EB), D, dt_bias.
template <typename T>
struct Params {
    T *at, *wt;
    Vec<T> d, bias;
    Params(const T* a, const T* w, const T* D, const T* dt_bias, const Shape& s, const Task& tk) {
        at = static_cast<T*>(std::malloc(sizeof(T) * (s.n + s.r) * EB));
        wt = at + s.n * EB;
        for (long j = 0; j < EB; ++j) {
            for (long k = 0; k < s.n; ++k) at[k * EB + j] = j < tk.w ? a[(tk.e0 + j) * s.n + k] : T(0);
            for (long k = 0; k < s.r; ++k) wt[k * EB + j] = j < tk.w ? w[(tk.e0 + j) * s.r + k] : T(0);
        }
        d = load(D, tk);
        bias = load(dt_bias, tk);
    }
    ~Params() { std::free(at); }
    Params(const Params&) = delete;
    Vec<T> a(long k) const { return ld(at + k * EB); }
    Vec<T> w(long k) const { return ld(wt + k * EB); }
};

// One chunk's per-step values, each (K, EB): Δ_t, x_t, y_t = C_t · h_t (without D), and two rows for
// the gate and the gradients.
template <typename T>
struct Steps {
    T *delta, *x, *y, *u, *v;
    explicit Steps(T* scratch) : delta(scratch), x(scratch + K * EB), y(x + K * EB), u(y + K * EB), v(u + K * EB) {}
    static constexpr long size = 5 * K * EB;
};

// Steps [t0, t1) of the recurrence from the state h (n, EB), with the chunk's Δ_t, x_t, y_t into st_.
// Without das (the forward), h is updated in place; with it (the backward), h_t is written to
// h + (t - t0 + 1) n EB (h itself holds the chunk's first state) and exp(Δ_t A) to das + (t - t0) n EB.
template <typename T>
void steps(const T* x, const T* dt_low, const T* B, const T* C, const Params<T>& p, const Shape& s, const Task& tk,
           long t0, long t1, T* __restrict__ h, const Steps<T>& st_, T* __restrict__ das) {
    const long n = s.n, len = t1 - t0;
    for (long t = t0; t < t1; ++t) {
        long row = tk.bi * s.l + t;
        Vec<T> dt = p.bias;
        for (long k = 0; k < s.r; ++k) dt += p.w(k) * dt_low[row * s.r + k];
        st(st_.delta + (t - t0) * EB, dt);
        st(st_.x + (t - t0) * EB, load(x + row * s.e, tk));
    }
    each(st_.delta, len * EB, softplus<T>);
    for (long t = t0; t < t1; ++t) {
        long row = tk.bi * s.l + t;
        Vec<T> delta = ld(st_.delta + (t - t0) * EB), dx = delta * ld(st_.x + (t - t0) * EB), y[2] = {};
        const T* bt = B + row * n;
        const T* ct = C + row * n;
        const T* prev = das ? h + (t - t0) * n * EB : h;
        T* cur = das ? h + (t - t0 + 1) * n * EB : h;
        // Two accumulators for y: one chain of dependent additions over k would cost an add's latency per state.
        for (long k = 0; k < n; ++k) {
            Vec<T> da = vexp(delta * p.a(k)), hk = da * ld(prev + k * EB) + dx * bt[k];
            st(cur + k * EB, hk);
            y[k & 1] += ct[k] * hk;
            if (das) st(das + ((t - t0) * n + k) * EB, da);
        }
        st(st_.y + (t - t0) * EB, y[0] + y[1]);
    }
}

template <typename T>
void forward(const T* x, const T* dt_low, const T* w, const T* a, const T* B, const T* C, const T* D, const T* z,
             const T* dt_bias, T* out, T* bounds, Shape s, long first, long last) {
    T* scratch = static_cast<T*>(std::malloc(sizeof(T) * (s.n * EB + Steps<T>::size)));
    T* h = scratch;
    Steps<T> c_(scratch + s.n * EB);
    for (long i = first; i < last; ++i) {
        Task tk = task_of(i, s);
        Params<T> p(a, w, D, dt_bias, s, tk);
        std::memset(h, 0, sizeof(T) * s.n * EB);
        for (long c = 0; c < s.chunks(); ++c) {
            long t0 = c * K, t1 = t0 + K < s.l ? t0 + K : s.l, len = t1 - t0;
            // bounds (b, blocks, chunks, n, EB): the state entering each chunk.
            std::memcpy(bounds + ((tk.bi * s.blocks() + tk.blk) * s.chunks() + c) * s.n * EB, h,
                        sizeof(T) * s.n * EB);
            steps(x, dt_low, B, C, p, s, tk, t0, t1, h, c_, static_cast<T*>(nullptr));
            for (long t = t0; t < t1; ++t) st(c_.u + (t - t0) * EB, load(z + (tk.bi * s.l + t) * s.zs, tk));
            std::memcpy(c_.v, c_.u, sizeof(T) * len * EB);
            each(c_.v, len * EB, sigmoid<T>);
            for (long t = t0; t < t1; ++t) {
                long r = (t - t0) * EB;
                Vec<T> y = ld(c_.y + r) + p.d * ld(c_.x + r);
                store(out + (tk.bi * s.l + t) * s.e, y * ld(c_.u + r) * ld(c_.v + r), tk);
            }
        }
    }
    std::free(scratch);
}

// The adjoint, from t = l-1 down to 0, with g_t = dL/dh_t and dy_t = dout_t · silu(z_t):
//     g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1}
//     dC_t += dy_t h_t;  dB_t += g_t Δ_t x_t;  dx_t = Σ_n g_t B_t Δ_t + D dy_t;  dD += dy_t x_t
//     dΔ_t = Σ_n g_t (exp(Δ_t A) h_{t-1} A + B_t x_t);  dA += g_t exp(Δ_t A) h_{t-1} Δ_t
//     ddt_t = dΔ_t sigmoid(dt_t + dt_bias);  dbias += ddt_t;  dz_t = dout_t y_t silu'(z_t)
//     d dt_low_t = W^T ddt_t;  dW += ddt_t dt_low_t^T
// Σ_n g_t B_t is formed once per step (`gb`) and multiplied by Δ_t and x_t afterwards; the sums over
// channels (dB, dC, d dt_low) are formed EB at a time by hsums.
template <typename T>
void backward(const T* x, const T* dt_low, const T* w, const T* a, const T* B, const T* C, const T* D, const T* z,
              const T* dt_bias, const T* bounds, const T* dout, T* dx, T* dz, T* da_part, T* dd_part, T* dbias_part,
              T* dw_part, Shape s, T* db_acc, T* dc_acc, T* ddt_low_acc, long first, long last) {
    const long n = s.n;
    T* scratch = static_cast<T*>(std::malloc(sizeof(T) * (((2 * K + 3) * n + s.r) * EB + Steps<T>::size)));
    T *hs = scratch, *das = hs + (K + 1) * n * EB, *carry = das + K * n * EB, *dak = carry + n * EB;
    T* dwk = dak + n * EB;  // dW transposed (r, EB)
    Steps<T> c_(dwk + s.r * EB);
    for (long i = first; i < last; ++i) {
        Task tk = task_of(i, s);
        Params<T> p(a, w, D, dt_bias, s, tk);
        std::memset(carry, 0, sizeof(T) * (2 * n + s.r) * EB);  // carry, dak and dwk
        Vec<T> dd = {}, dbias = {};
        for (long c = s.chunks() - 1; c >= 0; --c) {
            long t0 = c * K, t1 = t0 + K < s.l ? t0 + K : s.l, len = t1 - t0;
            std::memcpy(hs, bounds + ((tk.bi * s.blocks() + tk.blk) * s.chunks() + c) * n * EB, sizeof(T) * n * EB);
            steps(x, dt_low, B, C, p, s, tk, t0, t1, hs, c_, das);  // this chunk's h_t, exp(Δ_t A), Δ_t, x_t, y_t
            // The gate: u = z, v = sigmoid(z); then u = dL/dy_t.
            for (long t = t0; t < t1; ++t) st(c_.u + (t - t0) * EB, load(z + (tk.bi * s.l + t) * s.zs, tk));
            std::memcpy(c_.v, c_.u, sizeof(T) * len * EB);
            each(c_.v, len * EB, sigmoid<T>);
            for (long t = t0; t < t1; ++t) {
                long row = tk.bi * s.l + t, r = (t - t0) * EB;
                Vec<T> zt = ld(c_.u + r), sig = ld(c_.v + r), xt = ld(c_.x + r), dout_t = load(dout + row * s.e, tk);
                Vec<T> y = ld(c_.y + r) + p.d * xt;
                store(dz + row * s.e, dout_t * y * sig * (T(1) + zt * (T(1) - sig)), tk);
                Vec<T> dy = dout_t * zt * sig;
                dd += dy * xt;
                st(c_.u + r, dy);
            }
            for (long t = t1 - 1; t >= t0; --t) {
                long row = tk.bi * s.l + t, r = (t - t0) * EB;
                Vec<T> delta = ld(c_.delta + r), xt = ld(c_.x + r), dy = ld(c_.u + r);
                Vec<T> xdelta = xt * delta, ddelta = {}, gb = {};
                const T* bt = B + row * n;
                const T* ct = C + row * n;
                T* dbt = db_acc + row * n;
                T* dct = dc_acc + row * n;
                const T* hprev = hs + (t - t0) * n * EB;
                const T* hcur = hprev + n * EB;
                const T* dat = das + (t - t0) * n * EB;
                for (long k0 = 0; k0 < n; k0 += EB) {
                    long kn = n - k0 < EB ? n - k0 : EB;
                    Vec<T> pc[EB], pb[EB];
                    for (long kk = 0; kk < kn; ++kk) {
                        long k = k0 + kk;
                        Vec<T> g = dy * ct[k] + ld(carry + k * EB);
                        Vec<T> gda = g * ld(dat + k * EB);  // passed to step t-1 through exp(Δ_t A)
                        Vec<T> gdh = gda * ld(hprev + k * EB);  // dL/d(Δ_t A)
                        pc[kk] = dy * ld(hcur + k * EB);
                        pb[kk] = g * xdelta;
                        gb += g * bt[k];
                        ddelta += gdh * p.a(k);
                        st(dak + k * EB, ld(dak + k * EB) + gdh * delta);
                        st(carry + k * EB, gda);
                    }
                    add_sums(dct + k0, pc, kn);
                    add_sums(dbt + k0, pb, kn);
                }
                st(c_.v + r, ddelta + gb * xt);  // dL/dΔ_t
                store(dx + row * s.e, p.d * dy + gb * delta, tk);
            }
            // softplus'(v) = sigmoid(v) = 1 - exp(-softplus(v)): from Δ_t, in place.
            each(c_.delta, len * EB, [](T v) { return -std::expm1(-v); });
            for (long t = t0; t < t1; ++t) {
                long row = tk.bi * s.l + t;
                Vec<T> g = ld(c_.v + (t - t0) * EB) * ld(c_.delta + (t - t0) * EB), pw[EB];  // ddt_t
                dbias += g;
                for (long k0 = 0; k0 < s.r; k0 += EB) {
                    long kn = s.r - k0 < EB ? s.r - k0 : EB;
                    for (long kk = 0; kk < kn; ++kk) {
                        long k = k0 + kk;
                        pw[kk] = g * p.w(k);
                        st(dwk + k * EB, ld(dwk + k * EB) + g * dt_low[row * s.r + k]);
                    }
                    add_sums(ddt_low_acc + row * s.r + k0, pw, kn);
                }
            }
        }
        for (long j = 0; j < tk.w; ++j) {
            for (long k = 0; k < n; ++k) da_part[(tk.bi * s.e + tk.e0 + j) * n + k] = dak[k * EB + j];
            dd_part[tk.bi * s.e + tk.e0 + j] = dd[j];
            dbias_part[tk.bi * s.e + tk.e0 + j] = dbias[j];
            for (long k = 0; k < s.r; ++k) dw_part[(tk.bi * s.e + tk.e0 + j) * s.r + k] = dwk[k * EB + j];
        }
    }
    std::free(scratch);
}

// The causal depthwise convolution and its SiLU, as in the mixer (archs/mamba.py, causal_depthwise_conv):
//     pre_t = bias + Σ_j w_j x_{t-k+1+j}  (zero before the first step),   out_t = silu(pre_t)
// x (b, l, e) with rows `xs` elements apart (a view of in_proj's output); w (e, k); bias (e); out, dy,
// dx (b, l, e) contiguous. A task is a batch row and CG channels (CG / EB Vecs side by side): it walks
// t through the rows, reading x_{t-k+1..t} where they lie (still in cache); wide tasks, because each
// row of x is a new page of memory and a task of one Vec spent more time on those than on arithmetic.
// The backward walks t down, recomputes pre_t (k products) instead of keeping it, keeps dpre of the
// last k steps in a ring of R >= k rows (a power of two: slot t & (R-1)), and writes per-row partial
// sums dw (b, e, k) and dbias (b, e).
constexpr long CG = 64;

struct ConvTask {
    long bi, e0, w;  // batch row, first channel, channels (<= CG)
    long vecs() const { return (w + EB - 1) / EB; }
    Task vec(long v) const {  // the v-th Vec of channels, as a scan task would see it
        return {bi, 0, e0 + v * EB, w - v * EB < EB ? w - v * EB : EB};
    }
};

ConvTask conv_task_of(long index, long e) {
    long groups = (e + CG - 1) / CG, g = index % groups;
    return {index / groups, g * CG, e - g * CG < CG ? e - g * CG : CG};
}

template <typename T>
struct ConvParams {
    T* w;  // (CG / EB, k, EB), then bias (CG / EB, EB)
    long k;
    ConvParams(const T* weight, const T* bias, long k_, const ConvTask& ct) : k(k_) {
        w = static_cast<T*>(std::calloc(CG * (k + 1), sizeof(T)));
        for (long c = 0; c < ct.w; ++c) {
            long v = c / EB, lane = c % EB;
            for (long j = 0; j < k; ++j) w[(v * k + j) * EB + lane] = weight[(ct.e0 + c) * k + j];
            w[CG * k + v * EB + lane] = bias[ct.e0 + c];
        }
    }
    ~ConvParams() { std::free(w); }
    ConvParams(const ConvParams&) = delete;
    Vec<T> weight(long v, long j) const { return ld(w + (v * k + j) * EB); }
    Vec<T> bias(long v) const { return ld(w + CG * k + v * EB); }
    // pre_t of Vec v, from the rows of x at row0 + t - k + 1 .. row0 + t (those before the first step are 0)
    Vec<T> pre(const T* x, long xs, long row0, long t, long v, const Task& tk) const {
        Vec<T> out = bias(v);
        for (long j = t - k + 1 < 0 ? k - 1 - t : 0; j < k; ++j) out += weight(v, j) * load(x + (row0 + t - k + 1 + j) * xs, tk);
        return out;
    }
};

template <typename V>
inline V sigmoid_v(V v) {
    return 1 / (1 + vexp(-v));
}

template <typename T>
void conv_forward(const T* x, long xs, const T* w, const T* bias, T* out, Shape s, long k, long first, long last) {
    for (long i = first; i < last; ++i) {
        ConvTask ct = conv_task_of(i, s.e);
        ConvParams<T> p(w, bias, k, ct);
        long row0 = ct.bi * s.l;
        for (long t = 0; t < s.l; ++t)
            for (long v = 0; v < ct.vecs(); ++v) {
                Task tk = ct.vec(v);
                Vec<T> pre = p.pre(x, xs, row0, t, v, tk);
                store(out + (row0 + t) * s.e, pre * sigmoid_v(pre), tk);
            }
    }
}

// dpre_t = dy_t silu'(pre_t);  dx_t = Σ_j w_j dpre_{t+k-1-j} (terms past the last step are 0);
// dw_j = Σ_t dpre_t x_{t-k+1+j};  dbias = Σ_t dpre_t.
template <typename T>
void conv_backward(const T* x, long xs, const T* w, const T* bias, const T* dy, T* dx, T* dw_part, T* dbias_part,
                   Shape s, long k, long first, long last) {
    long slots = 1;
    while (slots < k) slots *= 2;
    const long mask = slots - 1;
    T* ring = static_cast<T*>(std::malloc(sizeof(T) * (slots + k + 1) * CG));  // dpre (R, CG), then dw, dbias
    T *dw = ring + slots * CG, *dbias = dw + k * CG;
    for (long i = first; i < last; ++i) {
        ConvTask ct = conv_task_of(i, s.e);
        ConvParams<T> p(w, bias, k, ct);
        long row0 = ct.bi * s.l;
        std::memset(dw, 0, sizeof(T) * (k + 1) * CG);
        for (long t = s.l - 1; t >= 0; --t)
            for (long v = 0; v < ct.vecs(); ++v) {
                Task tk = ct.vec(v);
                Vec<T> pre = p.pre(x, xs, row0, t, v, tk), sig = sigmoid_v(pre);
                Vec<T> dpre = load(dy + (row0 + t) * s.e, tk) * sig * (T(1) + pre * (T(1) - sig));
                st(ring + (t & mask) * CG + v * EB, dpre);
                st(dbias + v * EB, ld(dbias + v * EB) + dpre);
                for (long j = t - k + 1 < 0 ? k - 1 - t : 0; j < k; ++j)
                    st(dw + (v * k + j) * EB, ld(dw + (v * k + j) * EB) + dpre * load(x + (row0 + t - k + 1 + j) * xs, tk));
                Vec<T> g = {};
                for (long j = t + k - s.l > 0 ? t + k - s.l : 0; j < k; ++j)
                    g += p.weight(v, j) * ld(ring + ((t + k - 1 - j) & mask) * CG + v * EB);
                store(dx + (row0 + t) * s.e, g, tk);
            }
        for (long c = 0; c < ct.w; ++c) {
            long v = c / EB, lane = c % EB;
            for (long j = 0; j < k; ++j) dw_part[(ct.bi * s.e + ct.e0 + c) * k + j] = dw[(v * k + j) * EB + lane];
            dbias_part[ct.bi * s.e + ct.e0 + c] = dbias[v * EB + lane];
        }
    }
    std::free(ring);
}

}  // namespace

extern "C" {

long scan_chunk_steps() { return K; }
long scan_channels_per_task() { return EB; }
long conv_channels_per_task() { return CG; }

#define SCAN_ENTRY_POINTS(T, SUFFIX)                                                                                 \
    void scan_forward_##SUFFIX(const T* x, const T* dt_low, const T* w, const T* a, const T* B, const T* C,         \
                               const T* D, const T* z, const T* dt_bias, T* out, T* bounds, long b, long l, long e, \
                               long n, long zs, long r, long first, long last) {                                    \
        forward(x, dt_low, w, a, B, C, D, z, dt_bias, out, bounds, Shape{b, l, e, n, zs, r}, first, last);          \
    }                                                                                                                \
    void scan_backward_##SUFFIX(const T* x, const T* dt_low, const T* w, const T* a, const T* B, const T* C,        \
                                const T* D, const T* z, const T* dt_bias, const T* bounds, const T* dout, T* dx,    \
                                T* dz, T* da, T* dd, T* dbias, T* dw, long b, long l, long e, long n, long zs,      \
                                long r, T* db, T* dc, T* ddt_low, long first, long last) {                          \
        backward(x, dt_low, w, a, B, C, D, z, dt_bias, bounds, dout, dx, dz, da, dd, dbias, dw,                     \
                 Shape{b, l, e, n, zs, r}, db, dc, ddt_low, first, last);                                           \
    }

SCAN_ENTRY_POINTS(float, f32)
SCAN_ENTRY_POINTS(double, f64)

#define CONV_ENTRY_POINTS(T, SUFFIX)                                                                                 \
    void conv_forward_##SUFFIX(const T* x, long xs, const T* w, const T* bias, T* out, long b, long l, long e,      \
                               long k, long first, long last) {                                                     \
        conv_forward(x, xs, w, bias, out, Shape{b, l, e, 0, 0, 0}, k, first, last);                                     \
    }                                                                                                                \
    void conv_backward_##SUFFIX(const T* x, long xs, const T* w, const T* bias, const T* dy, T* dx, T* dw,          \
                                T* dbias, long b, long l, long e, long k, long first, long last) {                  \
        conv_backward(x, xs, w, bias, dy, dx, dw, dbias, Shape{b, l, e, 0, 0, 0}, k, first, last);                     \
    }

CONV_ENTRY_POINTS(float, f32)
CONV_ENTRY_POINTS(double, f64)
}
