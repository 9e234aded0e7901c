/* predictor.c — the five lesion-attribute masks of one image, through lesionseg's C
 * interface (include/lesionseg.h), as a C application would embed it.
 *
 *   cargo build --release
 *   cc -O2 -I include examples/predictor.c -L target/release -llesionseg \
 *      -Wl,-rpath,"$PWD/target/release" -o predictor_c
 *   ./predictor_c WEIGHTS IMAGE.ppm OUT_DIR [auto|cpu|cuda] [THRESHOLD] [SIZE]
 *
 * IMAGE is a binary PPM (P6, 8-bit; `convert x.jpg x.ppm` or any image library makes
 * one), so the example needs no image decoder. Writes OUT_DIR/<stem>_attribute_<name>.pgm
 * (8-bit PGM, 0/255), the masks `lesionseg predict` writes as PNG. tests/capi.rs
 * compiles, links and runs this file and compares its masks with `lesionseg predict`.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lesionseg.h"

/* Reads a P6 PPM with maxval 255; returns the pixels (caller frees) or NULL. */
static uint8_t* read_ppm(const char* path, uint32_t* width, uint32_t* height) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned w = 0, h = 0, maxval = 0;
    char magic[3] = {0};
    if (fscanf(f, "%2s", magic) != 1 || strcmp(magic, "P6") != 0) {
        fprintf(stderr, "%s: not a binary PPM (P6)\n", path);
        fclose(f);
        return NULL;
    }
    /* Width, height, maxval, skipping comments. */
    unsigned* fields[3] = {&w, &h, &maxval};
    for (int i = 0; i < 3; ++i) {
        int c;
        while ((c = fgetc(f)) == '#' || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            if (c == '#')
                while ((c = fgetc(f)) != '\n' && c != EOF) {
                }
        }
        ungetc(c, f);
        if (fscanf(f, "%u", fields[i]) != 1) {
            fprintf(stderr, "%s: bad PPM header\n", path);
            fclose(f);
            return NULL;
        }
    }
    fgetc(f); /* the one whitespace byte before the pixels */
    if (maxval != 255 || w == 0 || h == 0) {
        fprintf(stderr, "%s: need an 8-bit PPM (maxval 255), got %ux%u maxval %u\n", path, w, h, maxval);
        fclose(f);
        return NULL;
    }
    size_t n = (size_t)w * h * 3;
    uint8_t* rgb = malloc(n);
    if (!rgb || fread(rgb, 1, n, f) != n) {
        fprintf(stderr, "%s: truncated pixels\n", path);
        free(rgb);
        fclose(f);
        return NULL;
    }
    fclose(f);
    *width = w;
    *height = h;
    return rgb;
}

static int write_pgm(const char* path, const uint8_t* pixels, uint32_t w, uint32_t h) {
    FILE* f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 0;
    }
    fprintf(f, "P5\n%u %u\n255\n", w, h);
    int ok = fwrite(pixels, 1, (size_t)w * h, f) == (size_t)w * h;
    return fclose(f) == 0 && ok;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s WEIGHTS IMAGE.ppm OUT_DIR [auto|cpu|cuda] [THRESHOLD] [SIZE]\n", argv[0]);
        return 2;
    }
    int device = LESIONSEG_DEVICE_AUTO;
    if (argc > 4 && strcmp(argv[4], "cpu") == 0) device = LESIONSEG_DEVICE_CPU;
    if (argc > 4 && strcmp(argv[4], "cuda") == 0) device = LESIONSEG_DEVICE_CUDA;
    double threshold = argc > 5 ? atof(argv[5]) : 0.3;
    uint32_t size = argc > 6 ? (uint32_t)strtoul(argv[6], NULL, 10) : 0;

    uint32_t w, h;
    uint8_t* rgb = read_ppm(argv[2], &w, &h);
    if (!rgb) return 1;

    lesionseg_predictor* p = NULL;
    if (lesionseg_predictor_open(argv[1], device, LESIONSEG_PRECISION_F32, size, &p) != LESIONSEG_OK) {
        fprintf(stderr, "lesionseg: %s\n", lesionseg_last_error());
        free(rgb);
        return 1;
    }
    uint8_t* masks = malloc((size_t)LESIONSEG_ATTRIBUTES * w * h);
    int status = masks ? lesionseg_predict_masks(p, rgb, w, h, threshold, masks) : LESIONSEG_ERROR_INTERNAL;
    if (status != LESIONSEG_OK) {
        fprintf(stderr, "lesionseg: %s\n", masks ? lesionseg_last_error() : "out of memory");
        lesionseg_predictor_free(p);
        free(rgb);
        free(masks);
        return 1;
    }

    /* <stem> of IMAGE: the file name without folders and extension. */
    const char* base = strrchr(argv[2], '/') ? strrchr(argv[2], '/') + 1 : argv[2];
    char stem[256];
    snprintf(stem, sizeof stem, "%s", base);
    char* dot = strrchr(stem, '.');
    if (dot) *dot = '\0';
    int ok = 1;
    for (int k = 0; k < LESIONSEG_ATTRIBUTES; ++k) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s_attribute_%s.pgm", argv[3], stem, lesionseg_attribute_name(k));
        ok &= write_pgm(path, masks + (size_t)k * w * h, w, h);
    }
    printf("lesionseg %s: %ux%u image, network input %u, masks in %s\n", lesionseg_version(), w, h,
           lesionseg_predictor_size(p), argv[3]);
    lesionseg_predictor_free(p);
    free(rgb);
    free(masks);
    return ok ? 0 : 1;
}
