/* The C kernels of the CNN's CPU levers, compiled on first use by mnistlab/cnn/native.py with the
 * flags of the ISA torch runs at:
 *   pooled_conv_*: a convolution of a one-channel map, its 2x2 max pooling and a ReLU in one pass
 *                  (mnistlab/cnn/pooled_conv.py);
 *   winograd_*:    the transforms of Winograd F(m x m, 3 x 3) convolutions, one pass each; the
 *                  matrix products between them stay in torch (mnistlab/cnn/winograd.py);
 *   pool_relu_bf16_*: a 2x2 max pooling and a ReLU of a bf16 map (mnistlab/cnn/pool_relu.py);
 *   rmsprop_*:     the optimizer's update of every tensor in two calls (mnistlab/cnn/optim.py).
 * Every sum runs in a fixed order, so results repeat bit for bit.
 *
 * Channels go in blocks of LANES, one vector (GCC/Clang vector extensions: AVX2 registers with
 * -mavx2, pairs of SSE registers without); channel counts must be multiples of LANES. */
#include <stdint.h>
#include <string.h>

#define LANES 8
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf choose(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }

/* The max of a 2x2 pooling window's values v (row-major) and, in *won, which of them won: the first
 * maximum, and NaN wins, as max pooling takes it. Both pooling kernels share it so they agree. */
static inline vf window_max(const vf v[4], vi *won)
{
    vf best = v[0];
    *won = (vi){0};
    for (int q = 1; q < 4; q++) {
        const vi more = (v[q] > best) | (v[q] != v[q]);
        best = choose(more, v[q], best);
        *won = (vi)choose(more, (vf)(*won * 0 + q), (vf)*won);
    }
    return best;
}
static inline void store_window(uint8_t *p, vi won)
{
    for (int l = 0; l < LANES; l++)
        p[l] = (uint8_t)won[l];
}
static inline vi load_window(const uint8_t *p)
{
    vi won;
    for (int l = 0; l < LANES; l++)
        won[l] = p[l];
    return won;
}

/* bf16 values are the upper halves of floats: widened exactly, and narrowed exactly when they came
 * from bf16 (the lower halves are zero). */
typedef uint16_t vh __attribute__((vector_size(2 * LANES)));
static inline vf widen(const uint16_t *p) { vh v; memcpy(&v, p, sizeof v); return (vf)(__builtin_convertvector(v, vi) << 16); }
static inline void narrow(uint16_t *p, vf v) { vh h = __builtin_convertvector((vi)v >> 16, vh); memcpy(p, &h, sizeof h); }

/* relu(max_pool2d(x, 2)) of a channels-last bf16 map x (n, h, w, c), stride 2, floor: out and window
 * (n, ph, pw, c) as in the kernels below; no value is rounded, so it equals torch's pooling and ReLU. */
void pool_relu_bf16_forward(const uint16_t *x, uint16_t *out, uint8_t *window,
                            int64_t n, int64_t h, int64_t w, int64_t c, int64_t ph, int64_t pw)
{
    const vf zero = {0};
    for (int64_t img = 0; img < n; img++)
        for (int64_t py = 0; py < ph; py++)
            for (int64_t px = 0; px < pw; px++)
                for (int64_t c0 = 0; c0 < c; c0 += LANES) {
                    const uint16_t *corner = x + ((img * h + 2 * py) * w + 2 * px) * c + c0;
                    const vf v[4] = {widen(corner), widen(corner + c), widen(corner + w * c), widen(corner + w * c + c)};
                    vi won;
                    const vf best = window_max(v, &won);
                    const int64_t at = ((img * ph + py) * pw + px) * c + c0;
                    narrow(out + at, choose(best < zero, zero, best));
                    store_window(window + at, won);
                }
}

/* The gradient of x (every element written: the winner of each window gets the output's gradient
 * where the output is positive, everything else zero). */
void pool_relu_bf16_backward(const uint16_t *grad, const uint16_t *out, const uint8_t *window, uint16_t *grad_x,
                             int64_t n, int64_t h, int64_t w, int64_t c, int64_t ph, int64_t pw)
{
    const vf zero = {0};
    for (int64_t img = 0; img < n; img++) { /* the last row and column where the floor drops them */
        uint16_t *image = grad_x + img * h * w * c;
        if (h > 2 * ph)
            memset(image + 2 * ph * w * c, 0, (size_t)((h - 2 * ph) * w * c) * sizeof *image);
        if (w > 2 * pw)
            for (int64_t y = 0; y < 2 * ph; y++)
                memset(image + (y * w + 2 * pw) * c, 0, (size_t)((w - 2 * pw) * c) * sizeof *image);
    }
    for (int64_t img = 0; img < n; img++)
        for (int64_t py = 0; py < ph; py++)
            for (int64_t px = 0; px < pw; px++)
                for (int64_t c0 = 0; c0 < c; c0 += LANES) {
                    const int64_t at = ((img * ph + py) * pw + px) * c + c0;
                    /* as torch's ReLU backward: blocked where the output is <= 0 (NaN passes) */
                    const vf passed = choose(widen(out + at) <= zero, zero, widen(grad + at));
                    const vi won = load_window(window + at);
                    uint16_t *corner = grad_x + ((img * h + 2 * py) * w + 2 * px) * c + c0;
                    narrow(corner, choose(won == 0, passed, zero));
                    narrow(corner + c, choose(won == 1, passed, zero));
                    narrow(corner + w * c, choose(won == 2, passed, zero));
                    narrow(corner + w * c + c, choose(won == 3, passed, zero));
                }
}

/* A convolution of a one-channel map (valid, stride 1, k x k taps), its 2x2 max pooling (stride 2,
 * floor) and a ReLU, in one pass: the first block of an MNIST CNN. See
 * mnistlab/cnn/pooled_conv.py for why.
 *
 * Layouts: x (n, h, w); taps (k * k, o), tap-major; out and window (n, ph, pw, o), channels last.
 * window holds which of the pooling window's four positions (row-major) won: the first maximum,
 * as max pooling takes it. */
#define MAX_TAPS 49

static inline __attribute__((always_inline)) void forward_block(
    const float *x, const float *taps, const float *bias, float *out, uint8_t *window,
    int64_t n, int64_t h, int64_t w, const int64_t k, int64_t o, int64_t ph, int64_t pw, int64_t c0)
{
    vf t[MAX_TAPS];
    for (int64_t j = 0; j < k * k; j++)
        t[j] = load(taps + j * o + c0);
    const vf b = load(bias + c0);
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * h * w;
        for (int64_t py = 0; py < ph; py++) {
            for (int64_t px = 0; px < pw; px++) {
                const float *corner = xi + 2 * py * w + 2 * px;
                vf acc[4] = {b, b, b, b};
                for (int64_t ky = 0; ky < k; ky++)
                    for (int64_t kx = 0; kx < k; kx++) {
                        const float *p = corner + ky * w + kx;
                        const vf tap = t[ky * k + kx];
                        acc[0] += p[0] * tap;
                        acc[1] += p[1] * tap;
                        acc[2] += p[w] * tap;
                        acc[3] += p[w + 1] * tap;
                    }
                vi won;
                const vf best = window_max(acc, &won), zero = {0};
                const int64_t at = ((img * ph + py) * pw + px) * o + c0;
                store(out + at, choose(best < zero, zero, best));
                store_window(window + at, won);
            }
        }
    }
}

void pooled_conv_forward(const float *x, const float *taps, const float *bias, float *out, uint8_t *window,
                         int64_t n, int64_t h, int64_t w, int64_t k, int64_t o, int64_t ph, int64_t pw)
{
    for (int64_t c0 = 0; c0 < o; c0 += LANES) {
        if (k == 3) /* a constant k: the tap loops unroll and everything stays in registers */
            forward_block(x, taps, bias, out, window, n, h, w, 3, o, ph, pw, c0);
        else
            forward_block(x, taps, bias, out, window, n, h, w, k, o, ph, pw, c0);
    }
}

static inline __attribute__((always_inline)) void backward_block(
    const float *x, const float *grad, const float *out, const uint8_t *window, float *taps_grad,
    float *bias_grad, int64_t n, int64_t h, int64_t w, const int64_t k, int64_t o, int64_t ph, int64_t pw,
    int64_t c0)
{
    vf tg[MAX_TAPS];
    const vf zero = {0};
    vf bg = zero;
    for (int64_t j = 0; j < k * k; j++)
        tg[j] = zero;
    for (int64_t img = 0; img < n; img++) {
        const float *xi = x + img * h * w;
        for (int64_t py = 0; py < ph; py++) {
            for (int64_t px = 0; px < pw; px++) {
                const int64_t at = ((img * ph + py) * pw + px) * o + c0;
                const vf passed = choose(load(out + at) > zero, load(grad + at), zero);
                const vi won = load_window(window + at);
                bg += passed;
                vf routed[4];
                for (int q = 0; q < 4; q++)
                    routed[q] = choose(won == q, passed, zero);
                const float *corner = xi + 2 * py * w + 2 * px;
                for (int64_t ky = 0; ky < k; ky++)
                    for (int64_t kx = 0; kx < k; kx++) {
                        const float *p = corner + ky * w + kx;
                        tg[ky * k + kx] += p[0] * routed[0] + p[1] * routed[1] + p[w] * routed[2] + p[w + 1] * routed[3];
                    }
            }
        }
    }
    for (int64_t j = 0; j < k * k; j++)
        store(taps_grad + j * o + c0, tg[j]);
    store(bias_grad + c0, bg);
}

/* grad: the gradient of the block's output (after the ReLU); out: that output. */
void pooled_conv_backward(const float *x, const float *grad, const float *out, const uint8_t *window,
                          float *taps_grad, float *bias_grad,
                          int64_t n, int64_t h, int64_t w, int64_t k, int64_t o, int64_t ph, int64_t pw)
{
    for (int64_t c0 = 0; c0 < o; c0 += LANES) {
        if (k == 3)
            backward_block(x, grad, out, window, taps_grad, bias_grad, n, h, w, 3, o, ph, pw, c0);
        else
            backward_block(x, grad, out, window, taps_grad, bias_grad, n, h, w, k, o, ph, pw, c0);
    }
}

/* The transforms of Winograd F(m x m, 3 x 3) convolutions (mnistlab/cnn/winograd.py), each one
 * pass over channels-last memory: the matrix products between them stay in torch (MKL).
 * See winograd.py for the algebra.
 *
 * Geometry: a = m + 2; tiles th x tw per image, P = n * th * tw, tile p = (img * th + ty) * tw + tx
 * covers input rows m * ty .. m * ty + a - 1. bt is BT (a x a), at is AT (m x a), row-major.
 * x (n, h, w, c) channels last; u (a * a, P, c); products (a * a, P, o).
 * With pooling (m = 2): out (P, o) is the max over each tile's 2 x 2 outputs plus the bias, and
 * window says which of them (row-major) won, the first maximum as max pooling takes it.
 * Without: out (n, oh, ow, o), the tiles' outputs that fall inside it, plus the bias. */
#define MAX_A 6

static inline __attribute__((always_inline)) void winograd_input_body(const float *x, const float *bt, float *u, int64_t n, int64_t h, int64_t w, int64_t c,
                    const int64_t m, int64_t th, int64_t tw)
{
    const int64_t a = m + 2, tiles = n * th * tw;
    for (int64_t p = 0; p < tiles; p++) {
        const int64_t img = p / (th * tw), ty = p / tw % th, tx = p % tw;
        const float *corner = x + ((img * h + m * ty) * w + m * tx) * c;
        for (int64_t c0 = 0; c0 < c; c0 += LANES) {
            vf d[MAX_A][MAX_A], rows[MAX_A][MAX_A];
            for (int64_t r = 0; r < a; r++)
                for (int64_t s = 0; s < a; s++)
                    d[r][s] = load(corner + (r * w + s) * c + c0);
            for (int64_t i = 0; i < a; i++)
                for (int64_t s = 0; s < a; s++) {
                    vf sum = {0};
                    for (int64_t r = 0; r < a; r++)
                        sum += bt[i * a + r] * d[r][s];
                    rows[i][s] = sum;
                }
            for (int64_t i = 0; i < a; i++)
                for (int64_t j = 0; j < a; j++) {
                    vf sum = {0};
                    for (int64_t s = 0; s < a; s++)
                        sum += bt[j * a + s] * rows[i][s];
                    store(u + ((i * a + j) * tiles + p) * c + c0, sum);
                }
        }
    }
}
void winograd_input(const float *x, const float *bt, float *u, int64_t n, int64_t h, int64_t w, int64_t c,
                    int64_t m, int64_t th, int64_t tw)
{
    if (m == 2) /* a constant tile: the transform loops unroll */
        winograd_input_body(x, bt, u, n, h, w, c, 2, th, tw);
    else if (m == 3)
        winograd_input_body(x, bt, u, n, h, w, c, 3, th, tw);
    else
        winograd_input_body(x, bt, u, n, h, w, c, m, th, tw);
}

/* dx = the transposed transform of du, each tile's a x a gradients added at its input positions. */
static inline __attribute__((always_inline)) void winograd_input_backward_body(const float *du, const float *bt, float *dx, int64_t n, int64_t h, int64_t w,
                             int64_t c, const int64_t m, int64_t th, int64_t tw)
{
    const int64_t a = m + 2, tiles = n * th * tw;
    memset(dx, 0, (size_t)(n * h * w * c) * sizeof(float));
    for (int64_t p = 0; p < tiles; p++) {
        const int64_t img = p / (th * tw), ty = p / tw % th, tx = p % tw;
        float *corner = dx + ((img * h + m * ty) * w + m * tx) * c;
        for (int64_t c0 = 0; c0 < c; c0 += LANES) {
            vf g[MAX_A][MAX_A], rows[MAX_A][MAX_A];
            for (int64_t i = 0; i < a; i++)
                for (int64_t j = 0; j < a; j++)
                    g[i][j] = load(du + ((i * a + j) * tiles + p) * c + c0);
            for (int64_t r = 0; r < a; r++)
                for (int64_t j = 0; j < a; j++) {
                    vf sum = {0};
                    for (int64_t i = 0; i < a; i++)
                        sum += bt[i * a + r] * g[i][j];
                    rows[r][j] = sum;
                }
            for (int64_t r = 0; r < a; r++)
                for (int64_t s = 0; s < a; s++) {
                    vf sum = {0};
                    for (int64_t j = 0; j < a; j++)
                        sum += bt[j * a + s] * rows[r][j];
                    float *at = corner + (r * w + s) * c + c0;
                    store(at, load(at) + sum);
                }
        }
    }
}
void winograd_input_backward(const float *du, const float *bt, float *dx, int64_t n, int64_t h, int64_t w,
                             int64_t c, int64_t m, int64_t th, int64_t tw)
{
    if (m == 2) /* a constant tile: the transform loops unroll */
        winograd_input_backward_body(du, bt, dx, n, h, w, c, 2, th, tw);
    else if (m == 3)
        winograd_input_backward_body(du, bt, dx, n, h, w, c, 3, th, tw);
    else
        winograd_input_backward_body(du, bt, dx, n, h, w, c, m, th, tw);
}

static inline __attribute__((always_inline)) void outputs_of(const float *products, const float *at, int64_t a, int64_t m, int64_t tiles,
                              int64_t o, int64_t p, int64_t o0, vf y[MAX_A][MAX_A])
{
    vf rows[MAX_A][MAX_A];
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < a; j++) {
            vf sum = {0};
            for (int64_t i = 0; i < a; i++)
                sum += at[r * a + i] * load(products + ((i * a + j) * tiles + p) * o + o0);
            rows[r][j] = sum;
        }
    for (int64_t r = 0; r < m; r++)
        for (int64_t s = 0; s < m; s++) {
            vf sum = {0};
            for (int64_t j = 0; j < a; j++)
                sum += at[s * a + j] * rows[r][j];
            y[r][s] = sum;
        }
}

static inline __attribute__((always_inline)) void winograd_output_body(const float *products, const float *at, const float *bias, float *out, uint8_t *window,
                     int64_t n, int64_t o, const int64_t m, int64_t th, int64_t tw, int64_t oh, int64_t ow,
                     int64_t pool)
{
    const int64_t a = m + 2, tiles = n * th * tw;
    for (int64_t p = 0; p < tiles; p++) {
        const int64_t img = p / (th * tw), ty = p / tw % th, tx = p % tw;
        for (int64_t o0 = 0; o0 < o; o0 += LANES) {
            vf y[MAX_A][MAX_A];
            outputs_of(products, at, a, m, tiles, o, p, o0, y);
            const vf b = load(bias + o0);
            if (pool && m == 2) { /* winograd.py pools m = 2 tiles only */
                const vf outputs[4] = {y[0][0], y[0][1], y[1][0], y[1][1]};
                vi won;
                store(out + p * o + o0, window_max(outputs, &won) + b);
                store_window(window + p * o + o0, won);
                continue;
            }
            for (int64_t r = 0; r < m && m * ty + r < oh; r++)
                for (int64_t s = 0; s < m && m * tx + s < ow; s++)
                    store(out + ((img * oh + m * ty + r) * ow + m * tx + s) * o + o0, y[r][s] + b);
        }
    }
}
void winograd_output(const float *products, const float *at, const float *bias, float *out, uint8_t *window,
                     int64_t n, int64_t o, int64_t m, int64_t th, int64_t tw, int64_t oh, int64_t ow,
                     int64_t pool)
{
    if (m == 2) /* a constant tile: the transform loops unroll */
        winograd_output_body(products, at, bias, out, window, n, o, 2, th, tw, oh, ow, pool);
    else if (m == 3)
        winograd_output_body(products, at, bias, out, window, n, o, 3, th, tw, oh, ow, pool);
    else
        winograd_output_body(products, at, bias, out, window, n, o, m, th, tw, oh, ow, pool);
}

/* dproducts from the gradient of out (and, pooled, of which output won each window). */
static inline __attribute__((always_inline)) void winograd_output_backward_body(const float *grad, const uint8_t *window, const float *at, float *dproducts,
                              int64_t n, int64_t o, const int64_t m, int64_t th, int64_t tw, int64_t oh, int64_t ow,
                              int64_t pool)
{
    const int64_t a = m + 2, tiles = n * th * tw;
    const vf zero = {0};
    for (int64_t p = 0; p < tiles; p++) {
        const int64_t img = p / (th * tw), ty = p / tw % th, tx = p % tw;
        for (int64_t o0 = 0; o0 < o; o0 += LANES) {
            vf gy[MAX_A][MAX_A], rows[MAX_A][MAX_A];
            if (pool && m == 2) { /* winograd.py pools m = 2 tiles only */
                const vf g = load(grad + p * o + o0);
                const vi won = load_window(window + p * o + o0);
                for (int q = 0; q < 4; q++)
                    gy[q >> 1][q & 1] = choose(won == q, g, zero);
            } else {
                for (int64_t r = 0; r < m; r++)
                    for (int64_t s = 0; s < m; s++)
                        gy[r][s] = (m * ty + r < oh && m * tx + s < ow)
                            ? load(grad + ((img * oh + m * ty + r) * ow + m * tx + s) * o + o0) : zero;
            }
            for (int64_t i = 0; i < a; i++)
                for (int64_t s = 0; s < m; s++) {
                    vf sum = {0};
                    for (int64_t r = 0; r < m; r++)
                        sum += at[r * a + i] * gy[r][s];
                    rows[i][s] = sum;
                }
            for (int64_t i = 0; i < a; i++)
                for (int64_t j = 0; j < a; j++) {
                    vf sum = {0};
                    for (int64_t s = 0; s < m; s++)
                        sum += at[s * a + j] * rows[i][s];
                    store(dproducts + ((i * a + j) * tiles + p) * o + o0, sum);
                }
        }
    }
}
void winograd_output_backward(const float *grad, const uint8_t *window, const float *at, float *dproducts,
                              int64_t n, int64_t o, int64_t m, int64_t th, int64_t tw, int64_t oh, int64_t ow,
                              int64_t pool)
{
    if (m == 2) /* a constant tile: the transform loops unroll */
        winograd_output_backward_body(grad, window, at, dproducts, n, o, 2, th, tw, oh, ow, pool);
    else if (m == 3)
        winograd_output_backward_body(grad, window, at, dproducts, n, o, 3, th, tw, oh, ow, pool);
    else
        winograd_output_backward_body(grad, window, at, dproducts, n, o, m, th, tw, oh, ow, pool);
}

/* Keras' RMSprop over `count` tensors, each of sizes[k] floats in the same memory order as its
 * gradient, state and denominator, in two passes around torch's square root (whose vector kernel
 * rounds some values differently from an exact one: the update keeps torch's bits):
 *   rmsprop_state:  v = rho v + keep g g;  denom = v + eps
 *   (torch: denom = sqrt(denom))
 *   rmsprop_params: p += step g / denom
 * keep = 1 - rho and step = -lr are rounded to float by the caller as torch rounds its scalars;
 * every operation rounds as torch's mul_, addcmul_ (a fused multiply-add), add and addcdiv_ do. */
__attribute__((optimize("fp-contract=off")))
void rmsprop_state(int64_t count, const float *const *grads, float *const *state, float *const *denom,
                   const int64_t *sizes, float rho, float keep, float eps)
{
    for (int64_t k = 0; k < count; k++) {
        const float *restrict g = grads[k];
        float *restrict v = state[k], *restrict d = denom[k];
        for (int64_t i = 0; i < sizes[k]; i++) {
            const float vi = __builtin_fmaf(keep * g[i], g[i], v[i] * rho);
            v[i] = vi;
            d[i] = vi + eps;
        }
    }
}

__attribute__((optimize("fp-contract=off")))
void rmsprop_params(int64_t count, float *const *params, const float *const *grads, const float *const *denom,
                    const int64_t *sizes, float step)
{
    for (int64_t k = 0; k < count; k++) {
        float *restrict p = params[k];
        const float *restrict g = grads[k], *restrict d = denom[k];
        for (int64_t i = 0; i < sizes[k]; i++)
            p[i] = p[i] + step * g[i] / d[i];
    }
}
