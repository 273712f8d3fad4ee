# Data: synthesize the embedded dataset (DICOM in the TCIA layout), convert DICOM to NIfTI.


rule template_fields:
    input:
        code=data_code_files("phantom"),
    output:
        str(RP.phantom() / "mni_fields.npz"),
    log:
        str(RP.log("template_fields")),
    conda:
        CONDA_ENV
    shell:
        "python -m ldct template-fields --out {output:q} > {log:q} 2>&1"


rule synthesize:
    input:
        fields=str(RP.phantom() / "mni_fields.npz"),
        code=data_code_files("phantom", "lowdose", "synthetic", "dicom"),
    output:
        dicom=directory(str(RP.dicom("{subject}"))),
        phantom=str(RP.phantom("{subject}") / "phantom.nii.gz"),
        truth=str(RP.phantom("{subject}") / "truth.nii.gz"),
        repeat=str(RP.phantom("{subject}") / "repeat.nii.gz"),
        labels=str(RP.phantom("{subject}") / "labels.nii.gz"),
        params=str(RP.phantom("{subject}") / "params.json"),
    log:
        str(RP.log("synthesize/{subject}")),
    params:
        settings=SYNTHETIC_FLAGS,
        seed=config["seed"],
        phantom=lambda wc, output: str(Path(output.truth).parent),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m ldct synthesize --threads {threads} --subject {wildcards.subject:q} --seed {params.seed} {params.settings} "
        "--dicom-out {output.dicom:q} --phantom-out {params.phantom:q} --fields {input.fields:q} > {log:q} 2>&1"


rule convert:
    input:
        unpack(convert_inputs),
    output:
        full=str(RP.nifti("{subject}") / "full.nii.gz"),
        low=str(RP.nifti("{subject}") / "low.nii.gz"),
        labels=str(RP.nifti("{subject}") / "labels.nii.gz") if SYNTHETIC else [],
        truth=str(RP.nifti("{subject}") / "truth.nii.gz") if SYNTHETIC else [],
        repeat=str(RP.nifti("{subject}") / "repeat.nii.gz") if SYNTHETIC else [],
        manifest=str(RP.manifest_row("{subject}")),
    log:
        str(RP.log("convert/{subject}")),
    params:
        settings=CONVERT_FLAGS,
        out=lambda wc, output: str(Path(output.full).parent),
        series=series_args,
        phantom=lambda wc, input: f"--phantom {shlex.quote(str(Path(input.labels).parent))}" if SYNTHETIC else "",
    conda:
        CONDA_ENV
    shell:
        "python -m ldct convert {params.series} --out {params.out:q} {params.settings} "
        "{params.phantom} > {log:q} 2>&1"


rule manifest:
    input:
        [str(RP.manifest_row(s)) for s in SUBJECTS],
    output:
        str(RP.manifest),
    log:
        str(RP.log("manifest")),
    conda:
        CONDA_ENV
    shell:
        "python -m ldct manifest --out {output:q} {input:q} > {log:q} 2>&1"


if DOSE_SWEEP:  # extra reduced-dose series of the test subjects

    rule convert_doses:
        input:
            dicom=str(RP.dicom("{subject}")),
            code=data_code_files("dicom"),
        output:
            [str(RP.low_dose("{subject}", f)) for f in DOSES[1:]],
        log:
            str(RP.log("convert_doses/{subject}")),
        params:
            settings=DOSES_FLAGS,  # the extra doses go on the slices `convert` kept
            out=lambda wc, output: str(Path(output[0]).parent),
            fractions=DOSES[1:],
            primary=DOSES[0],
        conda:
            CONDA_ENV
        shell:
            "python -m ldct convert-doses --subject-dir {input.dicom:q} --fractions {params.fractions} "
            "--primary {params.primary} --out {params.out:q} {params.settings} > {log:q} 2>&1"
