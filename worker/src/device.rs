//! Device selection and the tensor layout of input batches.

use tch::{Device, Kind, Tensor};

use crate::error::{Result, WorkerError};

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`: the protocol's spellings
/// ([`lgaf_proto::Device::parse`]: `cpu`, `cuda:N`) and two shorthands that only a local
/// process can resolve.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cuda" => Ok(Device::Cuda(0)),
        "auto" => Ok(Device::cuda_if_available()),
        _ => lgaf_proto::Device::parse(name)
            .map(torch_device)
            .ok_or_else(|| WorkerError::Device(name.to_string())),
    }
}

/// The libtorch device of a protocol device.
pub fn torch_device(device: lgaf_proto::Device) -> Device {
    match device {
        lgaf_proto::Device::Cpu => Device::Cpu,
        lgaf_proto::Device::Cuda(index) => Device::Cuda(index as usize),
    }
}

/// HWC RGB8 images, `count` of them back to back -> normalised [B, 3, 112, 112] float on
/// `device`: `(x / 255 - 0.5) / 0.5`, in the default (NCHW-contiguous) layout. The uint8
/// batch crosses to the device before the conversion (a quarter of the bytes of float).
///
/// The layout is made explicit because the permuted HWC data would otherwise stay
/// channels-last, and on the CPU libtorch 2.11's oneDNN corrupts the heap in the weight
/// gradient of a channels-last 1x1 stride-2 conv with 8 input channels (reproduced in
/// PyTorch itself); channels-last is applied deliberately, on CUDA, by [`channels_last`].
pub fn images_to_tensor(rgb: &[u8], count: usize, side: usize, device: Device) -> Tensor {
    let t = Tensor::from_slice(rgb)
        .view([count as i64, side as i64, side as i64, 3])
        .to_device(device);
    (t.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 127.5 - 1.0).contiguous()
}

/// Channels-last (NHWC strides) view of a 4-D tensor, as `x.to(memory_format=torch.channels_last)`.
/// tch has no memory-format argument; permuting a NHWC-contiguous copy back gives the strides.
pub fn channels_last(x: &Tensor) -> Tensor {
    if x.dim() != 4 {
        return x.shallow_clone();
    }
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol_spellings_and_the_local_shorthands() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda:3").unwrap(), Device::Cuda(3));
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert!(parse_device("auto").is_ok());
        // The protocol's digits-only index: u32's parser alone would take "+1".
        for bad in ["gpu", "cuda:", "cuda:+1", "cuda:x", "CPU", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("device `{bad}`: expected cpu, cuda, cuda:N or auto")
            );
        }
    }
}
