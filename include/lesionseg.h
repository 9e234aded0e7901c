/* lesionseg.h — the C interface of lesionseg's predictor (liblesionseg.so).
 *
 * Load a multi-task U-Net checkpoint once, then predict the five ISIC 2018 Task 2
 * lesion-attribute masks (or probability maps) of RGB images of any size, at their
 * own size, exactly as `lesionseg predict` does.
 *
 *   lesionseg_predictor* p = NULL;
 *   if (lesionseg_predictor_open("best_jaccard.safetensors", LESIONSEG_DEVICE_AUTO,
 *                                LESIONSEG_PRECISION_F32, 0, &p) != LESIONSEG_OK) {
 *       fprintf(stderr, "%s\n", lesionseg_last_error());
 *       return 1;
 *   }
 *   uint8_t* masks = malloc(5 * (size_t)w * h);      // attribute k at masks + k*w*h
 *   if (lesionseg_predict_masks(p, rgb, w, h, 0.3, masks) != LESIONSEG_OK) ...
 *   lesionseg_predictor_free(p);
 *
 * Build: `cargo build --release` makes target/release/liblesionseg.so; compile with
 * `cc -I include app.c -L target/release -llesionseg` (and find the library at run
 * time through the rpath or LD_LIBRARY_PATH). A GPU needs only the NVIDIA driver
 * (the kernels are in the library); without one the CPU runs.
 *
 * Every function returns a status (LESIONSEG_OK or an error) and never aborts or
 * unwinds into the caller; after an error, lesionseg_last_error() says what went
 * wrong. A handle may be used from one thread at a time.
 */
#ifndef LESIONSEG_H
#define LESIONSEG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
#define LESIONSEG_OK 0
#define LESIONSEG_ERROR_ARGUMENT 1 /* NULL pointer, unknown device/precision, bad threshold or size */
#define LESIONSEG_ERROR_WEIGHTS 2  /* the weight file cannot be read or does not fit the model */
#define LESIONSEG_ERROR_DEVICE 3   /* the device cannot be opened or failed */
#define LESIONSEG_ERROR_IMAGE 4    /* the image does not fit */
#define LESIONSEG_ERROR_INTERNAL 5 /* a bug in the library, caught at the boundary */

/* Devices. AUTO takes a usable GPU, else the CPU. EMU runs the GPU kernels in the
 * host emulator (slow; for checking). */
#define LESIONSEG_DEVICE_AUTO 0
#define LESIONSEG_DEVICE_CPU 1
#define LESIONSEG_DEVICE_CUDA 2
#define LESIONSEG_DEVICE_EMU 3

/* Precisions of the GPU convolutions. BF16 needs tensor cores (sm_80 or newer);
 * the CPU computes in F32 only. */
#define LESIONSEG_PRECISION_F32 0
#define LESIONSEG_PRECISION_BF16 1

/* The number of attributes: masks and maps come in this order (see
 * lesionseg_attribute_name): pigment_network, negative_network, streaks,
 * milia_like_cyst, globules. */
#define LESIONSEG_ATTRIBUTES 5

/* An opaque predictor. */
typedef struct LesionsegPredictor lesionseg_predictor;

/* Loads `weights_path` (a safetensors weight file or training checkpoint) on
 * `device` with `precision`; `size` is the network's input side (a multiple of 32),
 * 0 for the checkpoint's training size (else 512). On success *out is the handle. */
int lesionseg_predictor_open(const char* weights_path, int device, int precision, uint32_t size,
                             lesionseg_predictor** out);

/* Frees a handle (NULL is ignored). */
void lesionseg_predictor_free(lesionseg_predictor* p);

/* The network's input side (images are resized to it and the maps back). */
uint32_t lesionseg_predictor_size(const lesionseg_predictor* p);

/* The five masks of an RGB image: `rgb` holds width*height pixels, row-major, 3
 * bytes each (R, G, B); `masks` receives 5*width*height bytes, attribute k at
 * masks + k*width*height, 255 where the probability is above `threshold` (the
 * paper: 0.3), else 0. */
int lesionseg_predict_masks(lesionseg_predictor* p, const uint8_t* rgb, uint32_t width, uint32_t height,
                            double threshold, uint8_t* masks);

/* The five probability maps of an RGB image (as lesionseg_predict_masks, before the
 * threshold): `probs` receives 5*width*height floats in [0, 1]. */
int lesionseg_predict_probabilities(lesionseg_predictor* p, const uint8_t* rgb, uint32_t width, uint32_t height,
                                    float* probs);

/* What went wrong in the last call on this thread ("" after a success); valid until
 * the next call on this thread. */
const char* lesionseg_last_error(void);

/* The name of attribute k (0..4), as in the output file names; NULL otherwise. */
const char* lesionseg_attribute_name(int k);

/* The library's version, e.g. "0.1.0". */
const char* lesionseg_version(void);

#ifdef __cplusplus
}
#endif

#endif /* LESIONSEG_H */
