/* test_optim: SGD (momentum, Nesterov) and Adam against torch.optim trajectories written by tests/ref/optim_ref.py;
 * schedules (exponential, cosine, warm-up) against their formulas; bad configs rejected; the optim.recipe presets
 * and an explicit key winning over a preset. */
#include "mednet/config.h"
#include "mednet/optim.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { N = 1000, STEPS = 5 };

int main(int argc, char **argv)
{
    TEST_EXPECT(argc == 2, "usage: test_optim REFERENCE.bin");
    if (argc != 2) return 1;
    FILE *f = fopen(argv[1], "rb");
    TEST_EXPECT(f != NULL, "cannot open %s", argv[1]);
    if (!f) return 1;
    size_t per_case = N * (1 + 2 * STEPS);
    float *ref = malloc(3 * per_case * sizeof(float));
    size_t got = fread(ref, sizeof(float), 3 * per_case, f);
    fclose(f);
    TEST_EXPECT(got == 3 * per_case, "reference file too short: %zu floats", got);
    if (got != 3 * per_case) return 1;

    for (int c = 0; c < 3; c++) {
        mn_optim_config cfg = mn_optim_defaults();
        cfg.schedule = MN_SCHED_CONSTANT;
        cfg.kind = c == 2 ? MN_OPTIM_ADAM : MN_OPTIM_SGD;
        cfg.lr = c == 2 ? 0.01 : 0.05;
        cfg.nesterov = c == 1;
        mn_optim *opt = NULL;
        TEST_EXPECT(mn_optim_create(&cfg, N, &opt) == MN_OK, "create");
        const float *r = ref + c * per_case;
        float p[N];
        memcpy(p, r, sizeof p);
        double worst = 0;
        for (int s = 0; s < STEPS; s++) {
            const float *g = r + N * (1 + 2 * s), *want = r + N * (2 + 2 * s);
            /* Update in two ranges to exercise offsets. */
            TEST_EXPECT(mn_optim_update(opt, p, g - 0, 0, 400, cfg.lr, s + 1) == MN_OK, "update");
            TEST_EXPECT(mn_optim_update(opt, p, g, 400, N - 400, cfg.lr, s + 1) == MN_OK, "update");
            double e = mn_test_max_relerr(p, want, N, 1e-2); /* params are O(1): floor at 1e-2 */
            if (e > worst) worst = e;
        }
        printf("optimiser case %d (%s): worst relative error vs torch over %d steps %.2e\n", c,
               c == 0 ? "SGD momentum" : c == 1 ? "SGD nesterov" : "Adam", STEPS, worst);
        TEST_EXPECT(worst < 1e-5, "case %d deviates from torch: %.3e", c, worst);
        mn_optim_destroy(&opt);
        TEST_EXPECT(opt == NULL, "destroy clears");
    }
    free(ref);

    /* Schedules. */
    mn_optim_config cfg = mn_optim_defaults();
    cfg.lr = 0.1;
    cfg.gamma = 0.5;
    cfg.decay_steps = 10;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 20) - 0.025) < 1e-12, "exponential");
    cfg.schedule = MN_SCHED_COSINE;
    cfg.total_steps = 100;
    cfg.min_lr = 0.0;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 50) - 0.05) < 1e-12 && fabs(mn_optim_lr(&cfg, 100)) < 1e-12, "cosine");
    cfg.warmup_steps = 10;
    TEST_EXPECT(fabs(mn_optim_lr(&cfg, 0) - 0.01) < 1e-12, "warm-up start: %g", mn_optim_lr(&cfg, 0));
    cfg.lr = -1;
    mn_optim *opt = NULL;
    mn_error_set_quiet(1);
    TEST_EXPECT(mn_optim_create(&cfg, 10, &opt) == MN_ERR_ARG && opt == NULL, "negative lr rejected");
    mn_error_set_quiet(0);

    /* Recipes: defaults of the other keys; a key in the file wins. */
    static const struct {
        const char *text;
        int kind;
        double lr, mult, wd, momentum;
    } rc[] = {
        {"[optim]\nrecipe = medicalnet\n", MN_OPTIM_SGD, 1e-3, 100, 1e-3, 0.9},
        {"[optim]\nrecipe = adam\n", MN_OPTIM_ADAM, 1e-3, 10, 1e-3, 0.9},
        {"[optim]\nrecipe = medicalnet\nhead_lr_mult = 7\nlr = 0.5\n", MN_OPTIM_SGD, 0.5, 7, 1e-3, 0.9},
        {"[optim]\n", MN_OPTIM_SGD, 1e-3, 1, 1e-3, 0.9},
    };
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) {
        mn_config *c = NULL;
        mn_optim_config o;
        double mult = 0;
        mn_err e = mn_config_parse(rc[i].text, "recipe test", &c);
        if (!e) e = mn_optim_config_read(c, "optim", 100, &o, &mult);
        TEST_EXPECT(e == MN_OK, "recipe case %zu parsed", i);
        if (!e)
            TEST_EXPECT((int)o.kind == rc[i].kind && o.lr == rc[i].lr && mult == rc[i].mult &&
                            o.weight_decay == rc[i].wd && o.momentum == rc[i].momentum &&
                            o.schedule == MN_SCHED_EXPONENTIAL && o.gamma == 0.99,
                        "recipe case %zu: kind %d lr %g head x%g decay %g momentum %g", i, (int)o.kind, o.lr, mult,
                        o.weight_decay, o.momentum);
        mn_config_destroy(&c);
    }
    mn_config *c = NULL;
    mn_optim_config o;
    double mult = 0;
    mn_error_set_quiet(1);
    mn_err e = mn_config_parse("[optim]\nrecipe = sgdr\n", "recipe test", &c);
    if (!e) e = mn_optim_config_read(c, "optim", 100, &o, &mult);
    mn_error_set_quiet(0);
    TEST_EXPECT(e == MN_ERR_CONFIG, "unknown recipe rejected (got %d)", (int)e);
    mn_config_destroy(&c);
    return mn_test_finish("test_optim");
}
