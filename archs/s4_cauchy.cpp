// S4's Cauchy sums on the CPU, forward and backward, compiled on first use by archs/cpu_kernels.py.
//
// For each channel h, numerator v and rfft frequency k of a kernel of length m (ω_k = exp(-2πik/m)):
//     out[v, h, k] = Σ_n  v_n r(λ_n) + conj(v_n) r(conj λ_n),   r(λ) = 2 / (z_num - z_den λ),
//     z_num = 2 (1 - ω_k), z_den = 1 + ω_k
// i.e. archs/s4.py's cauchy_pairs without its (H, N/2, M') tensors: each reciprocal is made in
// registers and used at once. Complex numbers are split into real and imaginary arrays:
// v (V, H, N2), lam (H, N2), out and its gradient (V, H, M) with M = m/2 + 1, all row-major.
// One task is one channel h; Python runs disjoint ranges of channels on several threads.
//
// Gradients follow PyTorch's convention for complex inputs (grad_x = conj(dy/dx) grad_y for a
// holomorphic y, conj(grad) through a conjugation), with dr/dλ = z_den r² / 2:
//     grad_v_n = Σ_k conj(r1) g + r2 conj(g)
//     grad_λ_n = Σ_k conj(q1) Σ_v conj(v) g + q2 conj(Σ_v v g),   q = z_den r² / 2
// where r1 = r(λ_n), r2 = r(conj λ_n), g = grad of out at (v, h, k).
#include <cmath>
#include <cstdlib>

namespace {

constexpr long TILE = 256;  // frequencies per tile: the tile's outputs stay in the L1 cache

template <typename T>
struct Freqs {  // z_num and z_den at every frequency
    T *znr, *zni, *zdr, *zdi;
    explicit Freqs(long m) {
        long M = m / 2 + 1;
        znr = static_cast<T*>(std::malloc(sizeof(T) * 4 * M));
        zni = znr + M, zdr = zni + M, zdi = zdr + M;
        for (long k = 0; k < M; ++k) {
            double theta = -2.0 * M_PI * double(k) / double(m);
            double c = std::cos(theta), s = std::sin(theta);
            znr[k] = T(2 * (1 - c)), zni[k] = T(-2 * s), zdr[k] = T(1 + c), zdi[k] = T(s);
        }
    }
    ~Freqs() { std::free(znr); }
};

// r1 = 2 / (z_num - z_den λ) and r2 = 2 / (z_num - z_den conj(λ)) at frequency k.
template <typename T>
inline void reciprocals(const Freqs<T>& f, long k, T lr, T li, T& r1r, T& r1i, T& r2r, T& r2i) {
    T ar = f.zdr[k] * lr, bi = f.zdi[k] * li, ai = f.zdr[k] * li, br = f.zdi[k] * lr;
    T d1r = f.znr[k] - (ar - bi), d1i = f.zni[k] - (ai + br);  // z_den λ = (ar - bi) + i (ai + br)
    T d2r = f.znr[k] - (ar + bi), d2i = f.zni[k] - (br - ai);  // z_den conj(λ) = (ar + bi) + i (br - ai)
    T s1 = T(2) / (d1r * d1r + d1i * d1i), s2 = T(2) / (d2r * d2r + d2i * d2i);
    r1r = d1r * s1, r1i = -d1i * s1, r2r = d2r * s2, r2i = -d2i * s2;
}

template <typename T>
void forward(const T* vr, const T* vi, const T* lr, const T* li, T* outr, T* outi, long V, long H, long N2, long m,
             long first, long last) {
    long M = m / 2 + 1;
    Freqs<T> f(m);
    for (long h = first; h < last; ++h) {
        for (long v = 0; v < V; ++v)
            for (long k = 0; k < M; ++k) outr[(v * H + h) * M + k] = outi[(v * H + h) * M + k] = 0;
        for (long k0 = 0; k0 < M; k0 += TILE) {
            long k1 = k0 + TILE < M ? k0 + TILE : M;
            for (long n = 0; n < N2; ++n) {
                // v r1 + conj(v) r2 = v_r (r1 + r2)_r + v_i (r2 - r1)_i + i [v_r (r1 + r2)_i + v_i (r1 - r2)_r]
                T sr[TILE], si[TILE], dr[TILE], di[TILE];
                for (long k = k0; k < k1; ++k) {
                    T r1r, r1i, r2r, r2i;
                    reciprocals(f, k, lr[h * N2 + n], li[h * N2 + n], r1r, r1i, r2r, r2i);
                    sr[k - k0] = r1r + r2r, si[k - k0] = r1i + r2i, dr[k - k0] = r1r - r2r, di[k - k0] = r2i - r1i;
                }
                for (long v = 0; v < V; ++v) {
                    T ar = vr[(v * H + h) * N2 + n], ai = vi[(v * H + h) * N2 + n];
                    T* __restrict__ o_r = outr + (v * H + h) * M + k0;
                    T* __restrict__ o_i = outi + (v * H + h) * M + k0;
                    for (long j = 0; j < k1 - k0; ++j) {
                        o_r[j] += ar * sr[j] + ai * di[j];
                        o_i[j] += ar * si[j] + ai * dr[j];
                    }
                }
            }
        }
    }
}

template <typename T>
void backward(const T* vr, const T* vi, const T* lr, const T* li, const T* gr, const T* gi, T* gvr, T* gvi,
              T* glr, T* gli, long V, long H, long N2, long m, long first, long last) {
    long M = m / 2 + 1;
    Freqs<T> f(m);
    for (long h = first; h < last; ++h) {
        for (long n = 0; n < N2; ++n) {
            T lam_r = lr[h * N2 + n], lam_i = li[h * N2 + n];
            T sum_lr = 0, sum_li = 0;
            for (long v = 0; v < V; ++v) gvr[(v * H + h) * N2 + n] = gvi[(v * H + h) * N2 + n] = 0;
            for (long k0 = 0; k0 < M; k0 += TILE) {
                long k1 = k0 + TILE < M ? k0 + TILE : M;
                T r1r[TILE], r1i[TILE], r2r[TILE], r2i[TILE], pa[TILE], pb[TILE], pc[TILE], pd[TILE];
                for (long k = k0; k < k1; ++k) {
                    reciprocals(f, k, lam_r, lam_i, r1r[k - k0], r1i[k - k0], r2r[k - k0], r2i[k - k0]);
                    pa[k - k0] = pb[k - k0] = pc[k - k0] = pd[k - k0] = 0;
                }
                for (long v = 0; v < V; ++v) {
                    T ar = vr[(v * H + h) * N2 + n], ai = vi[(v * H + h) * N2 + n];
                    const T* __restrict__ g_r = gr + (v * H + h) * M;
                    const T* __restrict__ g_i = gi + (v * H + h) * M;
                    T acc_r = 0, acc_i = 0;
                    for (long k = k0; k < k1; ++k) {
                        long j = k - k0;
                        // conj(r1) g + r2 conj(g)
                        acc_r += g_r[k] * (r1r[j] + r2r[j]) + g_i[k] * (r1i[j] + r2i[j]);
                        acc_i += g_i[k] * (r1r[j] - r2r[j]) + g_r[k] * (r2i[j] - r1i[j]);
                        // Σ_v v_r g_r, v_i g_i, v_r g_i, v_i g_r: both Σ_v conj(v) g and Σ_v v g
                        pa[j] += ar * g_r[k], pb[j] += ai * g_i[k], pc[j] += ar * g_i[k], pd[j] += ai * g_r[k];
                    }
                    gvr[(v * H + h) * N2 + n] += acc_r;
                    gvi[(v * H + h) * N2 + n] += acc_i;
                }
                for (long k = k0; k < k1; ++k) {
                    long j = k - k0;
                    T Ar = pa[j] + pb[j], Ai = pc[j] - pd[j];  // Σ_v conj(v) g
                    T Br = pa[j] - pb[j], Bi = pc[j] + pd[j];  // Σ_v v g
                    // q = z_den r² / 2
                    T s1r = r1r[j] * r1r[j] - r1i[j] * r1i[j], s1i = 2 * r1r[j] * r1i[j];
                    T s2r = r2r[j] * r2r[j] - r2i[j] * r2i[j], s2i = 2 * r2r[j] * r2i[j];
                    T q1r = (f.zdr[k] * s1r - f.zdi[k] * s1i) / 2, q1i = (f.zdr[k] * s1i + f.zdi[k] * s1r) / 2;
                    T q2r = (f.zdr[k] * s2r - f.zdi[k] * s2i) / 2, q2i = (f.zdr[k] * s2i + f.zdi[k] * s2r) / 2;
                    // conj(q1) A + q2 conj(B)
                    sum_lr += q1r * Ar + q1i * Ai + q2r * Br + q2i * Bi;
                    sum_li += q1r * Ai - q1i * Ar + q2i * Br - q2r * Bi;
                }
            }
            glr[h * N2 + n] = sum_lr;
            gli[h * N2 + n] = sum_li;
        }
    }
}

}  // namespace

extern "C" {

#define CAUCHY_ENTRY_POINTS(T, SUFFIX)                                                                               \
    void cauchy_forward_##SUFFIX(const T* vr, const T* vi, const T* lr, const T* li, T* outr, T* outi, long V,      \
                                 long H, long N2, long m, long first, long last) {                                  \
        forward(vr, vi, lr, li, outr, outi, V, H, N2, m, first, last);                                              \
    }                                                                                                                \
    void cauchy_backward_##SUFFIX(const T* vr, const T* vi, const T* lr, const T* li, const T* gr, const T* gi,     \
                                  T* gvr, T* gvi, T* glr, T* gli, long V, long H, long N2, long m, long first,      \
                                  long last) {                                                                      \
        backward(vr, vi, lr, li, gr, gi, gvr, gvi, glr, gli, V, H, N2, m, first, last);                            \
    }

CAUCHY_ENTRY_POINTS(float, f32)
CAUCHY_ENTRY_POINTS(double, f64)
}
