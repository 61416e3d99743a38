// Mamba's selective scan on the CPU, forward and backward, compiled on first use by archs/mamba_cpu.py.
//
// Plain C++ with a C interface (called through ctypes; no PyTorch headers, so it builds in about a
// second). It computes what mamba-ssm's selective_scan_fn computes with delta_softplus, D and z:
//     Δ_t = softplus(dt_t + dt_bias)
//     h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_t,   y_t = C_t · h_t + D x_t,   out_t = y_t · silu(z_t)
// per channel e with a state of size n. Shapes, row-major: x, dt, out (b, l, e) contiguous; z (b, l, e)
// with rows `zs` elements apart (it is a view of in_proj's output); a (e, n); B, C (b, l, n); D, dt_bias (e).
//
// Work is split into tasks = (batch row, block of EB channels); tasks [first, last) run in one call,
// and Python calls disjoint task ranges from several threads. Within a task the channel block is the
// innermost loop, contiguous in memory, so the compiler vectorizes it (exp included, via libmvec).
// Each task owns everything it writes: its block's rows of out, dx, ddt, dz; its slice of the
// boundary states; its slice of the partial sums dB, dC (blocks, b, l, n) and dA, dD, dbias (b, e, .),
// which Python sums afterwards.
//
// Memory: the forward keeps the state at every K-th step (the chunk boundaries, n·e·l/K numbers per
// row). The backward recomputes one chunk of K steps at a time into a small scratch that stays in
// cache, then runs the adjoint recurrence backwards through it.
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace {

constexpr long EB = 16;  // channels per task: one or two vector registers of floats
constexpr long K = 64;   // steps per chunk: the backward's scratch is (2K + 1) n EB numbers

struct Shape {
    long b, l, e, n, zs;
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

// v[j] = src[row * stride + e0 + j] for the block's channels, 0 beyond them.
template <typename T>
void load(const T* src, long offset, const Task& tk, T* v) {
    for (long j = 0; j < EB; ++j) v[j] = j < tk.w ? src[offset + tk.e0 + j] : T(0);
}

template <typename T>
T softplus(T v) {
    return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
T sigmoid(T v) {
    return T(1) / (T(1) + std::exp(-v));
}

// What a task needs of the per-channel parameters: A transposed to (n, EB), D and dt_bias.
template <typename T>
struct Params {
    T* at;
    T d[EB], bias[EB];
    Params(const T* __restrict__ a, const T* __restrict__ D, const T* __restrict__ dt_bias, const Shape& s, const Task& tk) {
        at = static_cast<T*>(std::malloc(sizeof(T) * s.n * EB));
        for (long k = 0; k < s.n; ++k)
            for (long j = 0; j < EB; ++j) at[k * EB + j] = j < tk.w ? a[(tk.e0 + j) * s.n + k] : T(0);
        load(D, 0, tk, d);
        load(dt_bias, 0, tk, bias);
    }
    ~Params() { std::free(at); }
};

// Steps [t0, t1) of the recurrence from state h (n, EB), updated in place. Writes y_t = C_t · h_t
// (without D) to ys[(t - t0) EB]; if hs is given, also h_t to hs[(t - t0 + 1) n EB], exp(Δ_t A)
// to das[(t - t0) n EB] and Δ_t to deltas[(t - t0) EB].
template <typename T>
void steps(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ B, const T* __restrict__ C, const Params<T>& p, const Shape& s, const Task& tk,
           long t0, long t1, T* __restrict__ h, T* __restrict__ ys, T* __restrict__ hs, T* __restrict__ das,
           T* __restrict__ deltas) {
    T xt[EB], delta[EB], dx[EB];
    for (long t = t0; t < t1; ++t) {
        long row = tk.bi * s.l + t;
        load(x, row * s.e, tk, xt);
        load(dt, row * s.e, tk, delta);
        T* yt = ys + (t - t0) * EB;
        for (long j = 0; j < EB; ++j) {
            delta[j] = softplus(delta[j] + p.bias[j]);
            dx[j] = delta[j] * xt[j];
            yt[j] = 0;
        }
        if (deltas) std::memcpy(deltas + (t - t0) * EB, delta, sizeof(T) * EB);
        const T* bt = B + row * s.n;
        const T* ct = C + row * s.n;
        for (long k = 0; k < s.n; ++k) {
            T* hk = h + k * EB;
            const T* ak = p.at + k * EB;
            T da[EB];
            for (long j = 0; j < EB; ++j) {
                da[j] = std::exp(delta[j] * ak[j]);
                hk[j] = da[j] * hk[j] + dx[j] * bt[k];
                yt[j] += ct[k] * hk[j];
            }
            if (das) std::memcpy(das + ((t - t0) * s.n + k) * EB, da, sizeof(T) * EB);
        }
        if (hs) std::memcpy(hs + (t - t0 + 1) * s.n * EB, h, sizeof(T) * s.n * EB);
    }
}

template <typename T>
void forward(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ a, const T* __restrict__ B, const T* __restrict__ C, const T* __restrict__ D, const T* __restrict__ z, const T* __restrict__ dt_bias,
             T* __restrict__ out, T* __restrict__ bounds, Shape s, long first, long last) {
    T* h = static_cast<T*>(std::malloc(sizeof(T) * (s.n + K) * EB));
    T* ys = h + s.n * EB;
    T xt[EB], zt[EB];
    for (long i = first; i < last; ++i) {
        Task tk = task_of(i, s);
        Params<T> p(a, D, dt_bias, s, tk);
        std::memset(h, 0, sizeof(T) * s.n * EB);
        for (long c = 0; c < s.chunks(); ++c) {
            long t0 = c * K, t1 = t0 + K < s.l ? t0 + K : s.l;
            // bounds (b, blocks, chunks, n, EB): the state entering each chunk.
            std::memcpy(bounds + ((tk.bi * s.blocks() + tk.blk) * s.chunks() + c) * s.n * EB, h,
                        sizeof(T) * s.n * EB);
            steps(x, dt, B, C, p, s, tk, t0, t1, h, ys, static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                  static_cast<T*>(nullptr));
            for (long t = t0; t < t1; ++t) {
                long row = tk.bi * s.l + t;
                load(x, row * s.e, tk, xt);
                load(z, row * s.zs, tk, zt);
                for (long j = 0; j < tk.w; ++j)
                    out[row * s.e + tk.e0 + j] = (ys[(t - t0) * EB + j] + p.d[j] * xt[j]) * zt[j] * sigmoid(zt[j]);
            }
        }
    }
    std::free(h);
}

// The adjoint, from t = l-1 down to 0, with g_t = dL/dh_t and dy_t = dout_t · silu(z_t):
//     g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1}
//     dC_t += dy_t h_t;  dB_t += g_t Δ_t x_t;  dx_t = Σ_n g_t B_t Δ_t + D dy_t;  dD += dy_t x_t
//     dΔ_t = Σ_n g_t (exp(Δ_t A) h_{t-1} A + B_t x_t);  dA += g_t exp(Δ_t A) h_{t-1} Δ_t
//     ddt_t = dΔ_t sigmoid(dt_t + dt_bias);  dbias += ddt_t;  dz_t = dout_t y_t silu'(z_t)
template <typename T>
void backward(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ a, const T* __restrict__ B, const T* __restrict__ C, const T* __restrict__ D, const T* __restrict__ z, const T* __restrict__ dt_bias,
              const T* __restrict__ bounds, const T* __restrict__ dout, T* __restrict__ dx, T* __restrict__ ddt, T* __restrict__ dz, T* __restrict__ da_part, T* __restrict__ db_part, T* __restrict__ dc_part, T* __restrict__ dd_part,
              T* __restrict__ dbias_part, Shape s, long first, long last) {
    long n = s.n;
    T* scratch = static_cast<T*>(std::malloc(sizeof(T) * ((2 * K + 4) * n + 2 * K) * EB));
    T *hs = scratch, *das = hs + (K + 1) * n * EB, *carry = das + K * n * EB, *dak = carry + n * EB;
    T *state = dak + n * EB, *ys = state + n * EB, *deltas = ys + K * EB;
    T xt[EB], zt[EB], dyt[EB], dxt[EB], ddelta[EB], dd[EB], dbias[EB], xdelta[EB];
    for (long i = first; i < last; ++i) {
        Task tk = task_of(i, s);
        Params<T> p(a, D, dt_bias, s, tk);
        std::memset(carry, 0, sizeof(T) * 2 * n * EB);  // carry and dak
        for (long j = 0; j < EB; ++j) dd[j] = dbias[j] = 0;
        for (long c = s.chunks() - 1; c >= 0; --c) {
            long t0 = c * K, t1 = t0 + K < s.l ? t0 + K : s.l;
            std::memcpy(hs, bounds + ((tk.bi * s.blocks() + tk.blk) * s.chunks() + c) * n * EB, sizeof(T) * n * EB);
            std::memcpy(state, hs, sizeof(T) * n * EB);
            steps(x, dt, B, C, p, s, tk, t0, t1, state, ys, hs, das, deltas);  // this chunk's h_t, exp(Δ_t A), Δ_t
            for (long t = t1 - 1; t >= t0; --t) {
                long row = tk.bi * s.l + t;
                const T* __restrict__ delta = deltas + (t - t0) * EB;
                load(x, row * s.e, tk, xt);
                load(z, row * s.zs, tk, zt);
                load(dout, row * s.e, tk, dyt);
                for (long j = 0; j < EB; ++j) {
                    T sig = sigmoid(zt[j]), y = ys[(t - t0) * EB + j] + p.d[j] * xt[j];
                    if (j < tk.w) dz[row * s.e + tk.e0 + j] = dyt[j] * y * sig * (T(1) + zt[j] * (T(1) - sig));
                    dyt[j] *= zt[j] * sig;  // from here on, dL/dy_t
                    dd[j] += dyt[j] * xt[j];
                    dxt[j] = p.d[j] * dyt[j];
                    ddelta[j] = 0;
                    xdelta[j] = xt[j] * delta[j];
                }
                const T* __restrict__ bt = B + row * n;
                const T* __restrict__ ct = C + row * n;
                T* __restrict__ dbt = db_part + ((tk.blk * s.b + tk.bi) * s.l + t) * n;
                T* __restrict__ dct = dc_part + ((tk.blk * s.b + tk.bi) * s.l + t) * n;
                const T* __restrict__ hprev = hs + (t - t0) * n * EB;
                const T* __restrict__ hcur = hprev + n * EB;
                const T* __restrict__ dat = das + (t - t0) * n * EB;
                for (long k = 0; k < n; ++k) {
                    const T* __restrict__ ak = p.at + k * EB;
                    T* __restrict__ ck = carry + k * EB;
                    T* __restrict__ dk = dak + k * EB;
                    T sum_b = 0, sum_c = 0;
                    for (long j = 0; j < EB; ++j) {
                        T g = dyt[j] * ct[k] + ck[j];
                        T gda = g * dat[k * EB + j];  // passed to step t-1 through exp(Δ_t A)
                        T gdh = gda * hprev[k * EB + j];  // dL/d(Δ_t A)
                        T gb = g * bt[k];
                        sum_c += dyt[j] * hcur[k * EB + j];
                        sum_b += g * xdelta[j];
                        ddelta[j] += gdh * ak[j] + gb * xt[j];
                        dxt[j] += gb * delta[j];
                        dk[j] += gdh * delta[j];
                        ck[j] = gda;
                    }
                    dbt[k] = sum_b;
                    dct[k] = sum_c;
                }
                for (long j = 0; j < EB; ++j) {
                    T g = -ddelta[j] * std::expm1(-delta[j]);  // softplus' = sigmoid = 1 - exp(-softplus)
                    dbias[j] += g;
                    if (j < tk.w) {
                        dx[row * s.e + tk.e0 + j] = dxt[j];
                        ddt[row * s.e + tk.e0 + j] = g;
                    }
                }
            }
        }
        for (long j = 0; j < tk.w; ++j) {
            for (long k = 0; k < n; ++k) da_part[(tk.bi * s.e + tk.e0 + j) * n + k] = dak[k * EB + j];
            dd_part[tk.bi * s.e + tk.e0 + j] = dd[j];
            dbias_part[tk.bi * s.e + tk.e0 + j] = dbias[j];
        }
    }
    std::free(scratch);
}

}  // namespace

extern "C" {

long scan_chunk_steps() { return K; }
long scan_channels_per_task() { return EB; }

#define SCAN_ENTRY_POINTS(T, SUFFIX)                                                                                 \
    void scan_forward_##SUFFIX(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ a, const T* __restrict__ B, const T* __restrict__ C, const T* __restrict__ D, const T* __restrict__ z, \
                               const T* __restrict__ dt_bias, T* __restrict__ out, T* __restrict__ bounds, long b, long l, long e, long n, long zs,        \
                               long first, long last) {                                                             \
        forward(x, dt, a, B, C, D, z, dt_bias, out, bounds, Shape{b, l, e, n, zs}, first, last);                    \
    }                                                                                                                \
    void scan_backward_##SUFFIX(const T* __restrict__ x, const T* __restrict__ dt, const T* __restrict__ a, const T* __restrict__ B, const T* __restrict__ C, const T* __restrict__ D,            \
                                const T* __restrict__ z, const T* __restrict__ dt_bias, const T* __restrict__ bounds, const T* __restrict__ dout, T* __restrict__ dx, T* __restrict__ ddt, T* __restrict__ dz, \
                                T* da, T* db, T* dc, T* dd, T* dbias, long b, long l, long e, long n, long zs,      \
                                long first, long last) {                                                            \
        backward(x, dt, a, B, C, D, z, dt_bias, bounds, dout, dx, ddt, dz, da, db, dc, dd, dbias,                   \
                 Shape{b, l, e, n, zs}, first, last);                                                               \
    }

SCAN_ENTRY_POINTS(float, f32)
SCAN_ENTRY_POINTS(double, f64)
}
