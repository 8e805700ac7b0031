/* A convolution of a one-channel map (valid, stride 1, k x k taps), its 2x2 max pooling (stride 2,
 * floor) and a ReLU, in one pass: the first block of an MNIST CNN. Compiled on first use by
 * mnistlab/cnn/pooled_conv.py with the flags of the ISA torch runs at; see that module for why.
 *
 * Layouts: x (n, h, w); taps (k * k, o), tap-major; out and window (n, ph, pw, o), channels last.
 * window holds which of the pooling window's four positions (row-major) won: the first maximum,
 * as max pooling takes it. Every sum runs in a fixed order, so results repeat bit for bit. */
#include <stdint.h>
#include <string.h>

/* Channels go in blocks of LANES, one vector (GCC/Clang vector extensions: AVX2 registers with
 * -mavx2, pairs of SSE registers without): a block's four window sums, its taps and its tap
 * gradients stay in registers across the whole map. o must be a multiple of LANES. */
#define LANES 8
#define MAX_TAPS 49
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf choose(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }

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
                vf best = acc[0];
                vi won = {0};
                for (int q = 1; q < 4; q++) {
                    const vi more = (acc[q] > best) | (acc[q] != acc[q]); /* NaN wins, as in max pooling */
                    best = choose(more, acc[q], best);
                    won = (vi)choose(more, (vf)(won * 0 + q), (vf)won);
                }
                const vf zero = {0};
                const int64_t at = ((img * ph + py) * pw + px) * o + c0;
                store(out + at, choose(best < zero, zero, best));
                for (int l = 0; l < LANES; l++)
                    window[at + l] = (uint8_t)won[l];
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
                vi won;
                for (int l = 0; l < LANES; l++)
                    won[l] = window[at + l];
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
